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

from support import JUDGE_KEY, TRACKING_PASSWORD as PASSWORD

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def files_holding(root: Path, secrets: list[str]) -> list[str]:
    """Every file under ``root`` whose bytes contain one of ``secrets``."""
    needles = [secret.encode() for secret in secrets]
    return [str(path) for path in root.rglob("*") if path.is_file()
            and any(needle in path.read_bytes() for needle in needles)]


def test_a_password_in_the_tracking_uri_reaches_no_output_log_or_model(pipeline_run):
    # The session's whole pipeline run (tests/integration/conftest.py): tracking.uri holds a password, the
    # judge key is in its environment.
    workdir, output = pipeline_run.workdir, pipeline_run.output
    assert "credentials in the URI were moved to MLFLOW_TRACKING_USERNAME" in output

    secrets = [PASSWORD, JUDGE_KEY, os.environ["AWS_SECRET_ACCESS_KEY"]]
    for secret in secrets:
        assert secret not in output
    assert (workdir / "hydra").is_dir() and any((workdir / "ray_results").rglob("job_config.yaml"))
    assert files_holding(workdir, secrets) == []
    # The server's database (params, tags, registry) and artifact store (checkpoint, evaluation files).
    assert (pipeline_run.server_root / "mlflow.db").is_file()
    assert files_holding(pipeline_run.server_root, secrets) == []

    # The pipeline ran both stages and its summary has the four columns, keyed alike.
    summary = json.loads((workdir / "demo_summary.json").read_text())
    assert summary["shuffled_image_metrics"].keys() == summary["metrics"].keys() == summary["baseline_metrics"].keys()
    assert "vqa_accuracy" in summary["blind_baseline_metrics"]
    assert "vqa_accuracy" in summary["metrics"] and summary["align"]["step"] == 4
    assert (Path(summary["align_checkpoint"]) / "aligned_parts.safetensors").is_file()

    # Tracking still worked, with the host kept in what was recorded.
    client = MlflowClient(pipeline_run.server_uri)
    version = client.get_model_version_by_alias("rsvlm-tiny-lora", "candidate")
    run = client.get_run(version.run_id)
    assert run.data.params["tracking.uri"] == pipeline_run.server_uri


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
