"""LoRA fine-tuning in Ray Train's local mode on synthetic data: loss, MLflow run, registry, evaluation."""

from __future__ import annotations

import json
import math

import pytest
from mlflow.tracking import MlflowClient

from rsvlm.data.prepare import prepare_dataset
from rsvlm.eval.evaluate import evaluate_model
from rsvlm.train.finetune import run_finetune

SMALL_DATA = ["data.synthetic.num_train_images=40", "data.synthetic.num_test_images=4", "scaling=local",
              "strategy.rank=16", "strategy.alpha=32", "train.log_every=10", "benchmark.limit=12"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, local_ray):
    from rsvlm.config import compose

    workdir = tmp_path_factory.mktemp("finetune")
    job = compose([f"workdir={workdir}", *SMALL_DATA, "train.max_steps=60"])
    prepare_dataset(job.data)
    return job, run_finetune(job)


def test_loss_is_finite_and_decreases(trained):
    job, result = trained
    client = MlflowClient(tracking_uri=job.tracking.uri)
    history = [m.value for m in sorted(client.get_metric_history(result.run_id, "train/loss"), key=lambda m: m.step)]
    assert len(history) == 6
    assert all(math.isfinite(v) for v in history)
    assert history[-1] < history[0] - 0.5, history


def test_mlflow_run_has_config_params_and_metrics(trained):
    job, result = trained
    run = MlflowClient(tracking_uri=job.tracking.uri).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["strategy.name"] == "lora"
    assert run.data.params["strategy.rank"] == "16"
    assert run.data.params["model.name_or_path"] == "tiny"
    assert int(run.data.params["model.params.vision_tower.trainable"]) == 0
    assert float(run.data.params["memory.estimate_gib"]) > 0
    assert {"train/loss", "train/lr", "train/grad_norm", "train/samples_per_s"} <= set(run.data.metrics)


def test_model_is_registered_with_candidate_alias(trained):
    job, result = trained
    client = MlflowClient(tracking_uri=job.tracking.uri)
    version = client.get_model_version_by_alias("rsvlm-tiny-lora", "candidate")
    assert str(version.version) == result.version == "1"
    assert version.run_id == result.run_id
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "checkpoint")}
    assert {"checkpoint/strategy.json", "checkpoint/adapter_model.safetensors", "checkpoint/processor"} <= artifacts


def test_registered_model_evaluates_and_scores_land_on_the_version(trained):
    job, _ = trained
    evaluation = evaluate_model(job, "models:/rsvlm-tiny-lora@candidate")
    rows = [json.loads(line) for line in evaluation.predictions_path.read_text().splitlines()]
    assert len(rows) == 12 and {"question_id", "image_id", "answer", "category", "ground_truth"} <= set(rows[0])
    assert 0.0 <= evaluation.metrics["vqa_accuracy"] <= 1.0
    tags = MlflowClient(tracking_uri=job.tracking.uri).get_model_version("rsvlm-tiny-lora", "1").tags
    assert float(tags["eval/synthetic/vqa_accuracy"]) == pytest.approx(evaluation.metrics["vqa_accuracy"])


def test_fully_masked_samples_stop_training(tmp_path, local_ray):
    """Answers cut off by max_length leave no supervised token: reported, not silently trained on."""
    from rsvlm.config import compose

    # 60 tokens hold the system prompt and the 16 image tokens but no answer.
    job = compose([f"workdir={tmp_path}", *SMALL_DATA, "train.max_steps=20", "data.max_length=60",
                   "tracking=off"])
    prepare_dataset(job.data)
    with pytest.raises(Exception, match="every label masked"):
        run_finetune(job)


def test_unreachable_tracking_server_trains_untracked_and_says_so_once(tmp_path, local_ray, monkeypatch, caplog):
    """A dead MLflow server does not stop training: one warning, a checkpoint, nothing registered."""
    import logging

    from rsvlm.config import compose
    from rsvlm.services import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    job = compose([f"workdir={tmp_path}", *SMALL_DATA, "train.max_steps=4", "train.log_every=2", "tracking=server",
                   f"tracking.uri=http://user:pw_leak@127.0.0.1:{free_port()}"])
    prepare_dataset(job.data)
    with caplog.at_level(logging.WARNING, logger="rsvlm"):
        result = run_finetune(job)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("rsvlm")]
    assert len(warnings) == 1, warnings
    assert "unreachable" in warnings[0] and "untracked" in warnings[0] and "pw_leak" not in warnings[0]
    assert result.run_id is None and result.version is None
    assert result.metrics["step"] == 4 and (result.checkpoint_path / "strategy.json").is_file()
