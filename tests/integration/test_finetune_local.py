"""LoRA fine-tuning in Ray Train's local mode on synthetic data: loss, MLflow run, registry, evaluation."""

from __future__ import annotations

import json
import math

import pytest
from mlflow.tracking import MlflowClient

from rsvlm.data.prepare import prepare_dataset
from rsvlm.errors import as_job_error
from rsvlm.eval.evaluate import evaluate_model
from rsvlm.tracking import resolve_model_uri
from rsvlm.tracking.registry import model_id_of
from rsvlm.train.finetune import run_finetune

SMALL_DATA = ["data.synthetic.num_train_images=40", "data.synthetic.num_test_images=4", "scaling=local",
              "strategy.rank=16", "strategy.alpha=32", "train.log_every=10", "benchmark.limit=12"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, local_ray):
    from rsvlm.config import compose

    workdir = tmp_path_factory.mktemp("finetune")
    job = compose([f"workdir={workdir}", *SMALL_DATA, "train.max_steps=60"])
    # A fresh tree: finetune prepares the built-in synthetic data itself (as the README's command expects).
    assert not (workdir / "data").exists()
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


def test_model_is_registered_with_candidate_alias(trained, tmp_path):
    job, result = trained
    client = MlflowClient(tracking_uri=job.tracking.uri)
    version = client.get_model_version_by_alias("rsvlm-tiny-lora", "candidate")
    assert str(version.version) == result.version == "1"
    assert version.run_id == result.run_id
    # The version is the run's logged model: a pyfunc model whose checkpoint artifact is the checkpoint folder.
    model = client.get_logged_model(model_id_of(version))
    assert model.source_run_id == result.run_id and model.params["rank"] == "16"
    assert {a.path for a in client.list_logged_model_artifacts(model.model_id)} >= {"MLmodel", "artifacts"}
    resolved = resolve_model_uri("models:/rsvlm-tiny-lora@candidate", job.tracking.uri, tmp_path)
    assert {"strategy.json", "adapter_model.safetensors", "processor"} <= {p.name for p in resolved.local_path.iterdir()}


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


def test_a_short_run_with_too_many_fully_masked_samples_fails_at_its_end(tmp_path, local_ray):
    """4 steps of 8 (32 samples, below MIN_SAMPLES_FOR_MASK_CHECK) with ~13% fully masked: judged at the end
    over every sample, so the run fails and registers nothing (it used to register silently)."""
    from rsvlm.config import compose

    # 73 tokens cut off the answers of ~15% of the synthetic records (the longest prompts).
    job = compose([f"workdir={tmp_path}", *SMALL_DATA, "train.max_steps=4", "train.micro_batch_size=8",
                   "data.max_length=73"])
    with pytest.raises(Exception) as caught:
        run_finetune(job)
    message = str(as_job_error(caught.value))
    assert " of 32 samples (" in message and "had every label masked, more than" in message
    assert "more than data.max_fully_masked_fraction=0.01 (at the end of the run" in message
    assert message.endswith("(raise data.max_length (now 73) so the answers fit, or fix the data)")
    client = MlflowClient(tracking_uri=job.tracking.uri)
    assert client.search_registered_models() == []
    [run] = client.search_runs([client.get_experiment_by_name(job.tracking.experiment).experiment_id])
    assert run.info.status == "FAILED"


def test_a_bad_line_the_size_check_cannot_see_is_named_by_file_and_line(tmp_path, local_ray):
    """A same-length corruption in the middle of a shard passes data.verify=sizes on the driver; training meets
    it and the job's error names the shard and line."""
    from rsvlm.config import compose
    from rsvlm.data.prepare import read_manifest

    job = compose([f"workdir={tmp_path}", *SMALL_DATA, "train.max_steps=4", "tracking=off", "data.verify=sizes"])
    prepare_dataset(job.data)
    shard = tmp_path / "data" / "prepared" / read_manifest(job.data.uri)["shards"][0]
    lines = shard.read_text().split("\n")
    middle = len(lines) // 2
    lines[middle] = "#" * len(lines[middle].encode())
    shard.write_text("\n".join(lines))
    with pytest.raises(Exception) as caught:
        run_finetune(job)
    message = str(as_job_error(caught.value))
    assert message.startswith(f"{shard}:{middle + 1}: invalid JSON (Expecting value; column 1): '###"), message


def test_unreachable_tracking_server_trains_untracked_and_says_so_once(tmp_path, local_ray, monkeypatch, caplog):
    """A dead MLflow server does not stop training: one warning, a checkpoint, nothing registered."""
    import logging

    from rsvlm.config import compose
    from rsvlm.dev.services import free_port

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
