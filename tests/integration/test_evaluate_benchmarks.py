"""jobs/evaluate.py beyond the synthetic split: answers through Ray Data actors equal the in-process ones,
published answer files of every benchmark kind are scored without a model (`predictions=`) against the
benchmark's own questions, such a score can never promote a model, and the job's mistakes are one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from rsvlm.data.prepare import prepare_dataset
from rsvlm.errors import JobError
from rsvlm.eval.evaluate import BASE_MODEL, evaluate_model, evaluate_predictions
from support import checkpoint_folder

ROOT = Path(__file__).resolve().parents[2]


def _write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _questions(path, answer_rows):
    """The benchmark questions file the answer rows answer: the same ids, categories and ground truths, each
    row with its own question text (rotations of one id differ by their text)."""
    return _write(path, [{"question_id": r["question_id"], "image": f"{r['question_id']}.png",
                          "text": r.get("question", f"question {r['question_id']} row {i}"),
                          "category": r["category"], "ground_truth": r["ground_truth"]}
                         for i, r in enumerate(answer_rows)])


def _job_lines(*args, env=None, timeout=300):
    """Run a job as a user types it; ``(exit code, non-blank stderr lines, stdout)``."""
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})})
    return result.returncode, [line for line in result.stderr.splitlines() if line.strip()], result.stdout


def test_ray_data_actors_answer_like_the_in_process_path(tmp_path, local_ray):
    from rsvlm.config import compose

    common = [f"workdir={tmp_path}", "data.synthetic.num_train_images=8", "data.synthetic.num_test_images=4",
              "tracking=off", "benchmark.limit=12", "benchmark.batch_size=4"]
    prepare_dataset(compose(common).data)
    on_ray = evaluate_model(compose([*common, "benchmark.workers=1"]), BASE_MODEL, label="ray")
    in_process = evaluate_model(compose([*common, "benchmark.workers=0"]), BASE_MODEL, label="local")
    ray_rows = [json.loads(line) for line in on_ray.predictions_path.read_text().splitlines()]
    local_rows = [json.loads(line) for line in in_process.predictions_path.read_text().splitlines()]
    assert len(ray_rows) == 12
    assert [r["answer"] for r in ray_rows] == [r["answer"] for r in local_rows]
    assert [r["question_id"] for r in ray_rows] == [r["question_id"] for r in local_rows]


CIRCULAR = [  # question 1 right in both rotations, question 2 right in one of two
    {"question_id": 1, "category": "relationship", "answer": "B", "ground_truth": "B"},
    {"question_id": 1, "category": "relationship", "answer": "C. a ship", "ground_truth": "C"},
    {"question_id": 2, "category": "object", "answer": "A", "ground_truth": "A"},
    {"question_id": 2, "category": "object", "answer": "A", "ground_truth": "D"},
]
VQA = [
    {"question_id": 1, "category": "presence", "answer": "yes", "ground_truth": "Yes"},
    {"question_id": 2, "category": "presence", "answer": "no", "ground_truth": "yes"},
    {"question_id": 3, "category": "count", "answer": "3", "ground_truth": "3"},
]
GROUNDING = [  # [0,1000] boxes: identical, then half-overlapping (IoU 1/3), then none
    {"question_id": 1, "category": "grounding", "answer": "[[100,100,300,300]]", "ground_truth": "[[100,100,300,300]]"},
    {"question_id": 2, "category": "grounding", "answer": "[[0,0,200,100]]", "ground_truth": "[[100,0,300,100]]"},
    {"question_id": 3, "category": "grounding", "answer": "I cannot tell", "ground_truth": "[[0,0,100,100]]"},
]


@pytest.mark.parametrize("benchmark, rows, expected", [
    ("fitrsrc", CIRCULAR, {"overall": 0.5, "relationship_accuracy": 1.0, "object_accuracy": 0.0}),
    ("rsvqa_lr", VQA, {"OA": 2 / 3, "AA": (0.5 + 1.0) / 2, "presence_accuracy": 0.5, "count_accuracy": 1.0}),
    ("dior_rsvg", GROUNDING, {"accuracy": 1 / 3}),
])
def test_published_answer_files_are_scored_without_a_model(benchmark, rows, expected, tmp_path):
    from rsvlm.config import compose

    answers = _write(tmp_path / "answers.jsonl", rows)
    questions = _questions(tmp_path / "questions.jsonl", rows)
    job = compose([f"workdir={tmp_path}", f"benchmark={benchmark}", f"benchmark.predictions={answers}",
                   f"benchmark.questions={questions}"])
    evaluation = evaluate_predictions(job)
    for key, value in expected.items():
        assert evaluation.metrics[key] == pytest.approx(value), key
    client = MlflowClient(tracking_uri=job.tracking.uri)
    run = client.get_run(evaluation.run_id)
    logged = {a.path for a in client.list_artifacts(evaluation.run_id, f"eval/{benchmark}")}
    assert {f"eval/{benchmark}/report.html", f"eval/{benchmark}/predictions.jsonl"} <= logged
    assert "<table" in (evaluation.predictions_path.parent / "report.html").read_text()
    assert run.data.metrics[f"eval/{benchmark}/{next(iter(expected))}"] == pytest.approx(next(iter(expected.values())))
    assert run.data.metrics[f"eval/{benchmark}/missing_answers"] == 0
    assert run.data.tags["rsvlm.eval.source"] == "answer_file"


def test_caption_answer_file_scores_through_the_job_command_line(tmp_path):
    rows = [{"question_id": i, "category": "caption", "answer": pred, "ground_truth": refs}
            for i, (pred, refs) in enumerate([
                ("many buildings and green trees are around a parking lot",
                 ["many buildings and green trees are around a parking lot", "a parking lot beside buildings"]),
                ("two tennis courts next to a road", ["two tennis courts are next to a road"]),
                ("a ship on the water", ["several boats are docked in a harbor"]),
            ])]
    answers = _write(tmp_path / "answers.jsonl", rows)
    (tmp_path / "benchmarks" / "UCM-captions").mkdir(parents=True)
    _questions(tmp_path / "benchmarks" / "UCM-captions" / "questions.jsonl", rows)
    result = subprocess.run([sys.executable, "jobs/evaluate.py", f"workdir={tmp_path}", "benchmark=ucm_captions",
                             f"predictions={answers}", "tracking=off"], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "RSVLM_BENCHMARKS": str(tmp_path / "benchmarks")})
    assert result.returncode == 0, result.stderr[-3000:]
    # The job prints its metrics as one indented JSON object (after any log lines).
    metrics = json.loads(result.stdout[result.stdout.index("{\n"):result.stdout.rindex("}") + 1])
    assert metrics["benchmark"] == "ucm_captions"
    assert {"BLEU_1", "BLEU_4", "METEOR", "ROUGE_L", "CIDEr"} <= set(metrics)
    assert 0 < metrics["BLEU_4"] < metrics["BLEU_1"] <= 1 and metrics["CIDEr"] > 0


def test_an_answer_file_missing_fields_is_named(tmp_path):
    from rsvlm.config import compose

    answers = _write(tmp_path / "answers.jsonl", [{"question_id": 1, "answer": "yes"}, {"question_id": 2}])
    questions = _questions(tmp_path / "questions.jsonl", VQA)
    job = compose([f"workdir={tmp_path}", "benchmark=rsvqa_lr", f"benchmark.predictions={answers}",
                   f"benchmark.questions={questions}", "tracking=off"])
    with pytest.raises(JobError, match=r"answers.jsonl:2: answer row lacks \['answer'\]"):
        evaluate_predictions(job)


def test_open_ended_answers_get_judge_scores_in_the_metrics_and_the_predictions(tmp_path, monkeypatch):
    """With benchmark.judge.url set, complex-reasoning rows are sent to an OpenAI-compatible judge."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from rsvlm.config import compose

    seen_keys = []

    class Judge(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            self.rfile.read(int(self.headers["Content-Length"]))
            seen_keys.append(self.headers.get("Authorization"))
            body = json.dumps({"choices": [{"message": {"content": "8 6\nThe second answer misses a ship."}}]})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("RSVLM_JUDGE_API_KEY", "sk-test-judge")
    rows = [{"question_id": 1, "category": "complex_reasoning", "question": "Why is the harbor busy?",
             "answer": "Because of ships.", "ground_truth": "Many ships are docked."},
            {"question_id": 2, "category": "presence", "question": "Is there a ship?", "answer": "yes",
             "ground_truth": "yes"}]
    answers = _write(tmp_path / "answers.jsonl", rows)
    questions = _questions(tmp_path / "questions.jsonl", rows)
    try:
        job = compose([f"workdir={tmp_path}", f"benchmark.predictions={answers}", "tracking=off",
                       f"benchmark.questions={questions}",
                       f"benchmark.judge.url=http://127.0.0.1:{server.server_port}/v1"])
        evaluation = evaluate_predictions(job)
    finally:
        server.shutdown()
    assert seen_keys == ["Bearer sk-test-judge"]  # only the open-ended row went to the judge
    assert evaluation.metrics["vqa_accuracy"] == 1.0
    assert evaluation.metrics["judge_complex_reasoning_relative"] == pytest.approx(6 / 8 * 100)
    judged = [json.loads(line) for line in evaluation.predictions_path.read_text().splitlines()][0]
    assert (judged["judge_reference_score"], judged["judge_candidate_score"]) == (8, 6)
    assert "sk-test-judge" not in evaluation.predictions_path.read_text()


# ------------------------------------------------------------------------- answer files never promote a model


def _champion_and_candidate(job, tmp_path) -> str:
    """Versions 1 (@champion) and 2 (@candidate) of the job's registered model; returns its name."""
    from rsvlm.tracking import create_run, make_logger, register_model_version
    from support import set_alias

    run_id = create_run(job.tracking, "train")
    make_logger(job.tracking.uri, run_id, True).log_artifacts(str(checkpoint_folder(tmp_path / "ckpt")), "checkpoint")
    name = job.registered_model_name
    assert register_model_version(job.tracking.uri, name, run_id, "checkpoint") == "1"
    set_alias(job.tracking.uri, name, "champion", "1")
    assert register_model_version(job.tracking.uri, name, run_id, "checkpoint", alias="candidate") == "2"
    return name


def test_only_an_evaluation_of_the_registered_version_itself_can_promote_it(tmp_path, monkeypatch):
    """A perfect answer file (predictions=) is scored and logged, but is no model version's score: it cannot
    move @champion, not even with its score and run copied onto the candidate by hand."""
    from rsvlm.config import compose
    from rsvlm.tracking.promotion import promote_if_better

    questions = _questions(tmp_path / "questions.jsonl", VQA)
    perfect = _write(tmp_path / "perfect.jsonl", [{**row, "answer": row["ground_truth"]} for row in VQA])
    common = [f"workdir={tmp_path}", "benchmark=rsvqa_lr", f"benchmark.questions={questions}",
              "tracking.registered_model=rs-promo"]
    job = compose(common)
    name = _champion_and_candidate(job, tmp_path)
    client = MlflowClient(tracking_uri=job.tracking.uri)
    # Evaluations of model versions, with the generation replaced (no model is needed to test promotion).
    monkeypatch.setattr("rsvlm.eval.evaluate.answer_questions", lambda job, uri, questions: ["no", "no", "0"])
    assert evaluate_model(job, f"models:/{name}@champion").metrics["OA"] == 0.0

    scored = evaluate_predictions(compose([*common, f"benchmark.predictions={perfect}"]))
    assert scored.metrics["OA"] == 1.0
    assert client.get_run(scored.run_id).data.tags["rsvlm.eval.source"] == "answer_file"
    assert not [key for key in client.get_model_version(name, "2").tags if key.startswith("eval/")]
    with pytest.raises(JobError, match=r"^models:/rs-promo@candidate \(v2\): no verified eval/rsvqa_lr/OA score: "
                                       r"rs-promo v2 was never evaluated on rsvqa_lr \(.*python jobs/evaluate.py "
                                       r"model_uri=models:/rs-promo@candidate benchmark=rsvqa_lr\)$"):
        promote_if_better(job.tracking.uri, name, "rsvqa_lr", "OA")

    for key, value in {"eval/rsvqa_lr/OA": "1.0", "eval/rsvqa_lr/run_id": scored.run_id}.items():
        client.set_model_version_tag(name, "2", key, value)
    with pytest.raises(JobError, match=r"is not an evaluation of rs-promo v2 \(source: answer_file"):
        promote_if_better(job.tracking.uri, name, "rsvqa_lr", "OA")
    code, lines, _ = _job_lines("jobs/register.py", *common)
    assert code == 1, lines
    assert len(lines) == 1 and lines[0].startswith("error: models:/rs-promo@candidate (v2): no verified"), lines
    assert str(client.get_registered_model(name).aliases["champion"]) == "1"

    # An evaluation of v2 itself that beats the champion's (2/3 > 0) does promote it.
    monkeypatch.setattr("rsvlm.eval.evaluate.answer_questions", lambda job, uri, questions: ["yes", "no", "3"])
    assert evaluate_model(job, f"models:/{name}@candidate").model_version == "2"
    promotion = promote_if_better(job.tracking.uri, name, "rsvqa_lr", "OA")
    assert promotion.promoted and promotion.candidate_score == pytest.approx(2 / 3)
    assert promotion.previous_champion_score == 0.0
    assert str(client.get_registered_model(name).aliases["champion"]) == "2"


# ------------------------------------------------------------------------------- one-line errors of the jobs


def test_a_duplicate_answer_stops_the_job_with_one_line_naming_file_and_line(tmp_path):
    questions = _questions(tmp_path / "questions.jsonl", VQA)
    answers = _write(tmp_path / "answers.jsonl", [{**VQA[0], "answer": "yes"}] * 3 + VQA[1:])
    code, lines, _ = _job_lines("jobs/evaluate.py", f"workdir={tmp_path}", "benchmark=rsvqa_lr", "tracking=off",
                                f"benchmark.questions={questions}", f"predictions={answers}")
    assert code == 1
    assert lines == [f"error: {answers}:2: question_id 1 (category 'presence') is answered again (already at "
                     f"line 1) (keep one answer per benchmark question)"]
    assert not (tmp_path / "eval").exists()  # nothing written


def test_unknown_models_aliases_and_missing_benchmark_files_are_one_line_each(tmp_path):
    from rsvlm.config import compose
    from rsvlm.tracking import create_run, make_logger, register_model_version

    tracking = f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"
    job = compose([f"workdir={tmp_path}", tracking])
    run_id = create_run(job.tracking, "train")
    make_logger(job.tracking.uri, run_id, True).log_artifacts(str(checkpoint_folder(tmp_path / "ckpt")), "checkpoint")
    register_model_version(job.tracking.uri, "rs-known", run_id, "checkpoint", alias="candidate")
    nowhere = tmp_path / "nowhere"
    common = [f"workdir={tmp_path}", tracking]
    cases = [
        (["jobs/evaluate.py", *common, "model_uri=models:/nope@candidate"], {},
         f"error: models:/nope@candidate: no registered model 'nope' in sqlite:///{tmp_path}/mlflow.db (registered "
         f"models: ['rs-known']) (python jobs/finetune.py model=<model> strategy=<strategy> registers "
         f"rsvlm-<model>-<strategy>@candidate (tracking.registered_model=NAME registers another name), or set "
         f"tracking.uri to the MLflow store that holds it)"),
        (["jobs/evaluate.py", *common, "model_uri=models:/rs-known@champion"], {},
         "error: models:/rs-known@champion: registered model 'rs-known' has no alias 'champion' (available "
         "aliases: {'candidate': '1'}) (@candidate is set by python jobs/finetune.py or jobs/sweep.py, @champion "
         "by python jobs/register.py; or name a version: models:/rs-known/<version>)"),
        (["jobs/evaluate.py", *common, "benchmark=fitrsrc", "model_uri=models:/rs-known@candidate"],
         {"RSVLM_BENCHMARKS": str(nowhere)},
         f"error: {nowhere}/FIT-RSRC/questions.jsonl: benchmark fitrsrc: questions file not found (benchmark files "
         f"are read from $RSVLM_BENCHMARKS ({nowhere}, which does not exist): put FIT-RSRC/questions.jsonl there, "
         f"point $RSVLM_BENCHMARKS at the folder that holds it, or set benchmark.questions=PATH)"),
        (["jobs/evaluate.py", *common, "model_uri=models:/rs-known@candidate", "predictions=answers.jsonl"], {},
         "error: model_uri: given together with predictions=answers.jsonl: an answer file is scored on its own, "
         "without a model (drop model_uri= to score the file, or drop predictions= to evaluate the model)"),
        (["jobs/register.py", *common], {},
         f"error: models:/rsvlm-tiny-lora@candidate: no registered model 'rsvlm-tiny-lora' in "
         f"sqlite:///{tmp_path}/mlflow.db (registered models: ['rs-known']) (python jobs/finetune.py model=tiny "
         f"strategy=lora registers rsvlm-tiny-lora@candidate, or set tracking.uri to the MLflow store that holds it)"),
    ]
    for args, env, expected in cases:
        code, lines, _ = _job_lines(*args, env=env)
        assert (code, lines) == (1, [expected]), args


def test_a_missing_benchmark_folder_is_one_line_for_an_answer_file_too(tmp_path, monkeypatch):
    from rsvlm.config import compose

    monkeypatch.delenv("RSVLM_BENCHMARKS", raising=False)
    answers = _write(tmp_path / "answers.jsonl", CIRCULAR)
    job = compose([f"workdir={tmp_path}", "benchmark=fitrsrc", f"benchmark.predictions={answers}", "tracking=off"])
    with pytest.raises(JobError) as caught:
        evaluate_predictions(job)
    assert str(caught.value) == (
        f"{tmp_path}/benchmarks/FIT-RSRC/questions.jsonl: benchmark fitrsrc: questions file not found "
        f"($RSVLM_BENCHMARKS is not set, so benchmark files are read from <workdir>/benchmarks "
        f"({tmp_path}/benchmarks, which does not exist): put FIT-RSRC/questions.jsonl there, point "
        f"$RSVLM_BENCHMARKS at the folder that holds it, or set benchmark.questions=PATH)")
    with pytest.raises(JobError, match=r"answers-missing.jsonl: answer file not found"):
        evaluate_predictions(compose([f"workdir={tmp_path}", "benchmark=rsvqa_lr", "tracking=off",
                                      f"benchmark.questions={_questions(tmp_path / 'q.jsonl', VQA)}",
                                      f"benchmark.predictions={tmp_path / 'answers-missing.jsonl'}"]))
