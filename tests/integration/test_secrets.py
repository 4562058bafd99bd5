"""No secret reaches what a job writes: stdout/stderr, Hydra's output folder, checkpoints, MLflow (params,
tags, artifacts, the registered model) — checked by grepping every file a whole pipeline run leaves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PASSWORD = "Pa55-w0rd-in-the-uri"
JUDGE_KEY = "judge-key-from-the-environment"
SMALL = ["data.synthetic.num_train_images=24", "data.synthetic.num_test_images=2", "scaling=local",
         "strategy.rank=8", "strategy.alpha=16", "train.max_steps=4", "align.max_steps=2", "train.log_every=2",
         "benchmark.limit=6",
         "benchmark.workers=0", "tracking.system_metrics_interval_s=0"]


def files_holding(root: Path, secrets: list[str]) -> list[str]:
    """Every file under ``root`` whose bytes contain one of ``secrets``."""
    needles = [secret.encode() for secret in secrets]
    return [str(path) for path in root.rglob("*") if path.is_file()
            and any(needle in path.read_bytes() for needle in needles)]


def test_a_password_in_the_tracking_uri_reaches_no_output_log_or_model(tmp_path, mlflow_server):
    # The fixture's folder: the server's sqlite database and its default artifact root.
    default_artifacts = MlflowClient(mlflow_server).get_experiment("0").artifact_location
    server_root = Path(default_artifacts.removeprefix("file://")).parent.parent
    assert (server_root / "mlflow.db").is_file()
    host = mlflow_server.removeprefix("http://")
    workdir = tmp_path / "work"
    env = {**os.environ, "RSVLM_JUDGE_API_KEY": JUDGE_KEY}
    done = subprocess.run([sys.executable, "jobs/pipeline.py", f"workdir={workdir}",
                           f"tracking.uri=http://rsvlm:{PASSWORD}@{host}", *SMALL],
                          cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "credentials in the URI were moved to MLFLOW_TRACKING_USERNAME" in done.stderr

    secrets = [PASSWORD, JUDGE_KEY, os.environ["AWS_SECRET_ACCESS_KEY"]]
    for secret in secrets:
        assert secret not in done.stdout and secret not in done.stderr
    assert (workdir / "hydra").is_dir() and any((workdir / "ray_results").rglob("job_config.yaml"))
    assert files_holding(workdir, secrets) == []
    # The server's database (params, tags, registry) and artifact store (checkpoint, evaluation files).
    assert files_holding(server_root, secrets) == []

    # The pipeline ran both stages and its summary has the four columns, keyed alike.
    summary = json.loads((workdir / "demo_summary.json").read_text())
    assert summary["shuffled_image_metrics"].keys() == summary["metrics"].keys() == summary["baseline_metrics"].keys()
    assert "vqa_accuracy" in summary["blind_baseline_metrics"]
    assert "vqa_accuracy" in summary["metrics"] and summary["align"]["step"] == 2
    assert (Path(summary["align_checkpoint"]) / "aligned_parts.safetensors").is_file()

    # Tracking still worked, with the host kept in what was recorded.
    client = MlflowClient(mlflow_server)
    version = client.get_model_version_by_alias("rsvlm-tiny-lora", "candidate")
    run = client.get_run(version.run_id)
    assert run.data.params["tracking.uri"] == f"http://{host}"


def test_credentials_in_an_environment_tracking_uri_are_moved_out_of_the_config(monkeypatch, tmp_path):
    from rsvlm.config import compose, to_dict

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"https://ops:{PASSWORD}@mlflow.example:5000")
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):  # restored afterwards
        monkeypatch.setenv(name, "placeholder")
    job = compose([f"workdir={tmp_path}", "tracking=server"])
    assert job.tracking.uri == "https://mlflow.example:5000"
    assert PASSWORD not in str(to_dict(job))
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "ops" and os.environ["MLFLOW_TRACKING_PASSWORD"] == PASSWORD


def test_credentials_in_another_value_are_refused_before_hydra_records_them(tmp_path):
    done = subprocess.run([sys.executable, "jobs/finetune.py", f"workdir={tmp_path}",
                           f"storage.endpoint_url=http://key:{PASSWORD}@127.0.0.1:9000"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("error: storage.endpoint_url: the value holds credentials")
    assert PASSWORD not in done.stderr + done.stdout
    assert not (tmp_path / "hydra").exists()
