"""The user path of the local stack: ``ray job submit --working-dir . -- python jobs/finetune.py …`` against a
Ray head, MLflow server and S3 endpoint running as separate processes on 127.0.0.1 (``rsvlm.dev.stack``).

The head is its own cluster with its own temporary folder; this test process never calls ``ray.init``, so it
does not touch the session's in-process Ray (``local_ray``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import boto3
import pytest
from mlflow.tracking import MlflowClient

from rsvlm.dev.services import free_port, pid_alive
from rsvlm.dev.stack import MLFLOW_BUCKET, Stack, StackPorts, processes_under, start_stack, stop_stack
from rsvlm.tracking.registry import model_id_of

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")
SMALL_DATA = ["data.synthetic.num_train_images=16", "data.synthetic.num_test_images=2"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    state_dir = tmp_path_factory.mktemp("stack")
    ray_temp = tempfile.mkdtemp(prefix="rsvlm-ray-")  # short: Ray's socket paths live under it
    ports = StackPorts(s3=free_port(), mlflow=free_port(), ray=free_port(), dashboard=free_port())
    running = start_stack(state_dir, ports, num_cpus=2, ray_temp_dir=ray_temp)
    try:
        yield running
    finally:
        stop_stack(state_dir, grace_s=5)  # like `ray stop --force` after a short grace
        leftovers = processes_under(ray_temp)
        shutil.rmtree(ray_temp, ignore_errors=True)
    assert not any(pid_alive(service.pid) for service in running.services.values())
    assert not leftovers, f"processes left running from the Ray head's folder: {leftovers}"


def ray_cli(stack: Stack, *args: str, timeout: float) -> subprocess.CompletedProcess:
    """The ``ray`` CLI with the variables `make stack` prints exported (job address, auth mode, S3, MLflow)."""
    return subprocess.run([RAY, *args], cwd=REPO, env={**os.environ, **stack.env}, capture_output=True,
                          text=True, timeout=timeout)


def test_finetune_job_submitted_to_the_stack_trains_logs_and_registers(stack, tmp_path):
    workdir = tmp_path / "work"
    prepared = subprocess.run([sys.executable, "jobs/prepare_data.py", "data=synthetic", f"workdir={workdir}",
                               *SMALL_DATA], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert prepared.returncode == 0, prepared.stderr

    run_name = f"job-submit-{uuid.uuid4().hex[:8]}"
    submission_id = f"rsvlm-test-{uuid.uuid4().hex[:8]}"
    submitted = ray_cli(stack, "job", "submit", "--address", stack.dashboard_url, "--submission-id", submission_id,
                        "--working-dir", ".", "--",
                        "python", "jobs/finetune.py", f"workdir={workdir}", "scaling=cpu2", "train.max_steps=4",
                        "train.log_every=2", "tracking=server", f"train.run_name={run_name}", *SMALL_DATA,
                        timeout=300)
    output = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, output[-6000:]
    assert f"Job '{submission_id}' succeeded" in output

    status = ray_cli(stack, "job", "status", "--address", stack.dashboard_url, submission_id, timeout=60)
    assert status.returncode == 0 and f"Job '{submission_id}' succeeded" in status.stdout + status.stderr
    logs = ray_cli(stack, "job", "logs", "--address", stack.dashboard_url, submission_id, timeout=60).stdout
    assert "step 2/4 (50%)" in logs and "step 4/4 (100%)" in logs
    assert "registered: rsvlm-tiny-lora version" in logs
    # The job ran the project's interpreter (the head puts its bin/ first on PATH) from the uploaded copy.
    assert f"{workdir}/ray_results/{run_name}/checkpoint_" in logs

    checkpoints = sorted(p for p in (workdir / "ray_results" / run_name).glob("checkpoint_*") if p.is_dir())
    assert checkpoints and (checkpoints[-1] / "strategy.json").is_file()

    client = MlflowClient(stack.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("rsvlm").experiment_id],
                              f"attributes.run_name = '{run_name}'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = runs[0]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [2, 4]
    version = client.get_model_version_by_alias("rsvlm-tiny-lora", "candidate")
    assert version.run_id == run.info.run_id
    # Artifacts went through the server's proxy to S3.
    s3 = boto3.client("s3", endpoint_url=stack.s3_endpoint, region_name="us-east-1")
    keys = [obj["Key"] for obj in s3.list_objects_v2(Bucket=MLFLOW_BUCKET, Prefix="artifacts/")["Contents"]]
    # The checkpoint is the registered logged model's artifact (MLflow keeps it under the folder's own name).
    model_id = model_id_of(version)
    assert client.get_logged_model(model_id).source_run_id == run.info.run_id
    assert any(f"models/{model_id}/artifacts/artifacts/checkpoint_" in key and key.endswith("/strategy.json")
               for key in keys), keys
