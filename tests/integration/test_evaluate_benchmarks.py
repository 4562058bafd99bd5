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
