"""Failures and restarts of a two-worker Ray Train run: a killed worker resumes from the last checkpoint,
and a stopped run started again under the same name continues, both into one MLflow run.

Select them with ``pytest -k "fault or resume"``.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from rsvlm.data.prepare import prepare_dataset
from rsvlm.train.finetune import RunFinishedError, run_finetune
from rsvlm.train.state import load_training_state

TOTAL_STEPS, INTERVAL = 60, 10
RUN = ["data.synthetic.num_train_images=40", "data.synthetic.num_test_images=2", "scaling=cpu2",
       "strategy.rank=8", "strategy.alpha=16", f"train.max_steps={TOTAL_STEPS}",
       f"train.checkpoint_every={INTERVAL}", "train.log_every=1", "train.val_batches=0", "train.run_name=faulty",
       "tracking.system_metrics_interval_s=0"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from rsvlm.config import compose

    workdir = tmp_path_factory.mktemp("fault-data")
    prepare_dataset(compose([f"workdir={workdir}", *RUN]).data)
    return workdir


def _job(tmp_path, prepared, *overrides):
    from rsvlm.config import compose

    return compose([f"workdir={tmp_path}", f"data.uri={prepared}/data/prepared", *RUN, *overrides])


def _train_workers() -> list[psutil.Process]:
    """The live Ray Train worker processes (Ray titles them ``ray::RayTrainWorker…``)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any("RayTrainWorker" in part for part in process.info["cmdline"] or []):
            found.append(process)
    return found


def _kill_a_worker_after_checkpoint(run_dir: Path, step: int, timeout_s: float = 240) -> None:
    """Wait until Ray Train has registered the checkpoint of ``step``, then SIGKILL one training worker."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if snapshot.is_file() and f"checkpoint_step{step:07d}" in snapshot.read_text():
            workers = _train_workers()
            assert len(workers) == 2, f"expected two training workers, found {len(workers)}"
            os.kill(workers[-1].pid, signal.SIGKILL)
            return
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint of step {step} registered in {run_dir} within {timeout_s} s")


def _in_background(target, *args) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def run():
        try:
            outcome["result"] = target(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def _loss_steps(job, run_id) -> list[int]:
    return [m.step for m in MlflowClient(tracking_uri=job.tracking.uri).get_metric_history(run_id, "train/loss")]


def test_fault_killed_worker_resumes_from_last_checkpoint_into_one_mlflow_run(tmp_path, prepared, local_ray):
    job = _job(tmp_path, prepared, "train.max_failures=1")
    thread, outcome = _in_background(run_finetune, job)
    _kill_a_worker_after_checkpoint(tmp_path / "ray_results" / "faulty", INTERVAL)
    thread.join(timeout=600)
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]

    assert result.metrics["step"] == TOTAL_STEPS
    resumed_from = result.metrics["resumed_from_step"]
    assert resumed_from >= INTERVAL and resumed_from % INTERVAL == 0
    # Every step was logged once, plus those redone after the restart: no more than one interval.
    steps = _loss_steps(job, result.run_id)
    assert set(steps) == set(range(1, TOTAL_STEPS + 1))
    assert 0 <= len(steps) - TOTAL_STEPS <= INTERVAL
    client = MlflowClient(tracking_uri=job.tracking.uri)
    runs = client.search_runs([client.get_experiment_by_name(job.tracking.experiment).experiment_id])
    assert [r.info.run_id for r in runs] == [result.run_id]
    assert runs[0].info.status == "FINISHED"
    assert client.get_model_version_by_alias(job.registered_model_name, "candidate").run_id == result.run_id


def test_resume_stopped_run_continues_under_the_same_name(tmp_path, prepared, local_ray):
    job = _job(tmp_path, prepared, "train.max_failures=0")
    run_dir = tmp_path / "ray_results" / "faulty"
    thread, outcome = _in_background(run_finetune, job)
    _kill_a_worker_after_checkpoint(run_dir, INTERVAL)
    thread.join(timeout=600)
    assert "error" in outcome, "with max_failures=0 the first start must stop at the failure"
    first_run_id = json.loads((run_dir / "rsvlm_run.json").read_text())["mlflow_run_id"]
    client = MlflowClient(tracking_uri=job.tracking.uri)
    assert client.get_run(first_run_id).info.status == "FAILED"
    stopped_at = max(_loss_steps(job, first_run_id))
    assert INTERVAL <= stopped_at < TOTAL_STEPS

    result = run_finetune(job)  # the same train.run_name: resume

    assert result.run_id == first_run_id
    assert client.get_run(first_run_id).info.status == "FINISHED"
    assert result.metrics["step"] == TOTAL_STEPS
    assert stopped_at - INTERVAL < result.metrics["resumed_from_step"] <= stopped_at
    history = client.get_metric_history(first_run_id, "train/lr")
    by_step: dict[int, set[float]] = {}
    for metric in history:
        by_step.setdefault(metric.step, set()).add(metric.value)
    assert sorted(by_step) == list(range(1, TOTAL_STEPS + 1))
    # A redone step used the same learning rate: the schedule resumed where it was, not from its start.
    assert all(len(values) == 1 for values in by_step.values()), by_step
    record = json.loads((run_dir / "rsvlm_run.json").read_text())
    assert record == {"mlflow_run_id": first_run_id, "starts": 2, "finished": True,
                      "checkpoint_uri": result.checkpoint_uri}

    state = load_training_state(Path(result.checkpoint_uri))
    assert state.step == TOTAL_STEPS and len(state.rng) == 2
    assert state.data.samples_seen == result.metrics["samples_seen"] > TOTAL_STEPS * 8
    moments = state.optimizer["state"]
    assert moments and all(float(value["step"]) == TOTAL_STEPS and "exp_avg" in value for value in moments.values())

    with pytest.raises(RunFinishedError, match="already finished"):
        run_finetune(job)
