"""jobs/evaluate.py beyond the synthetic split: answers through Ray Data actors equal the in-process ones,
and published answer files of every benchmark kind are scored without a model (`predictions=`)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from rsvlm.data.prepare import prepare_dataset
from rsvlm.eval.evaluate import BASE_MODEL, evaluate_model, evaluate_predictions


def _write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


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
    job = compose([f"workdir={tmp_path}", f"benchmark={benchmark}", f"benchmark.predictions={answers}"])
    evaluation = evaluate_predictions(job)
    for key, value in expected.items():
        assert evaluation.metrics[key] == pytest.approx(value), key
    client = MlflowClient(tracking_uri=job.tracking.uri)
    run = client.get_run(evaluation.run_id)
    logged = {a.path for a in client.list_artifacts(evaluation.run_id, f"eval/{benchmark}")}
    assert {f"eval/{benchmark}/report.html", f"eval/{benchmark}/predictions.jsonl"} <= logged
    assert "<table" in (evaluation.predictions_path.parent / "report.html").read_text()
    assert run.data.metrics[f"eval/{benchmark}/{next(iter(expected))}"] == pytest.approx(next(iter(expected.values())))


def test_caption_answer_file_scores_through_the_job_command_line(tmp_path):
    rows = [{"question_id": i, "category": "caption", "answer": pred, "ground_truth": refs}
            for i, (pred, refs) in enumerate([
                ("many buildings and green trees are around a parking lot",
                 ["many buildings and green trees are around a parking lot", "a parking lot beside buildings"]),
                ("two tennis courts next to a road", ["two tennis courts are next to a road"]),
                ("a ship on the water", ["several boats are docked in a harbor"]),
            ])]
    answers = _write(tmp_path / "answers.jsonl", rows)
    result = subprocess.run([sys.executable, "jobs/evaluate.py", f"workdir={tmp_path}", "benchmark=ucm_captions",
                             f"predictions={answers}", "tracking=off"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # The job prints its metrics as one indented JSON object (after any log lines).
    metrics = json.loads(result.stdout[result.stdout.index("{\n"):result.stdout.rindex("}") + 1])
    assert metrics["benchmark"] == "ucm_captions"
    assert {"BLEU_1", "BLEU_4", "METEOR", "ROUGE_L", "CIDEr"} <= set(metrics)
    assert 0 < metrics["BLEU_4"] < metrics["BLEU_1"] <= 1 and metrics["CIDEr"] > 0


def test_an_answer_file_missing_fields_is_named(tmp_path):
    from rsvlm.config import compose

    answers = _write(tmp_path / "answers.jsonl", [{"question_id": 1, "answer": "yes"}])
    job = compose([f"workdir={tmp_path}", "benchmark=rsvqa_lr", f"benchmark.predictions={answers}", "tracking=off"])
    with pytest.raises(ValueError, match=r"answers.jsonl:1: answer row lacks \['category', 'ground_truth'\]"):
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
    try:
        job = compose([f"workdir={tmp_path}", f"benchmark.predictions={answers}", "tracking=off",
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
