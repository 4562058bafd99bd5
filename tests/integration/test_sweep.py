"""Ray Tune sweeps end to end: real Ray (Tune + Train), real MLflow (sqlite), the tiny model.

The smoke sweep and the resumed sweep run ``jobs/sweep.py`` in a process of its own with a Ray of its own, as
a user does (the session's Ray is stopped meanwhile); the other sweeps run in the test process.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from rsvlm.tracking.registry import model_id_of
from rsvlm.tune.results import COMPLETED, FAILED, STOPPED_EARLY

ROOT = Path(__file__).resolve().parents[2]
SWEEP_JOB = [sys.executable, str(ROOT / "jobs" / "sweep.py")]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _runs(tracking_uri: str):
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("rsvlm")
    return client, client.search_runs([experiment.experiment_id])


def _run_job(args: list[str], timeout: float = 480) -> subprocess.CompletedProcess:
    return subprocess.run(SWEEP_JOB + args, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _table(workdir: Path, name: str) -> list[dict]:
    return json.loads((workdir / "sweeps" / name / "sweep_results.json").read_text())


def test_smoke_sweep_makes_parent_and_child_runs_and_registers_the_best(tmp_path, local_ray):
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    # Two trials (the rank grid; experts fixed) keep ASHA's stop and the per-trial values at half the time.
    args = ["sweep=smoke", f"workdir={tmp_path}", f"tracking.uri={tracking_uri}", "~sweep.space.strategy.num_experts"]
    done = _run_job(args)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    client, runs = _runs(tracking_uri)
    parents = [r for r in runs if r.data.tags.get("rsvlm.job") == "sweep"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.info.run_name == "smoke"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 == len(runs) - 1

    # Each trial is logged with the params of a plain finetune run, holding its own values.
    rows = {row["trial_id"]: row for row in _table(tmp_path, "smoke")}
    assert len(rows) == 2
    assert {r["strategy.rank"] for r in rows.values()} == {8, 16}
    for child in children:
        row = rows[child.data.tags["rsvlm.trial_id"]]
        assert child.data.params["strategy.rank"] == str(row["strategy.rank"])
        assert child.data.params["strategy.name"] == "moe_lora" and child.data.params["model.name"] == "tiny"
        assert child.data.tags["rsvlm.sweep.status"] == row["status"]
        assert child.info.status == {COMPLETED: "FINISHED", STOPPED_EARLY: "KILLED"}[row["status"]]
        history = client.get_metric_history(child.info.run_id, "val/loss")
        assert history and history[-1].step == row["step"]
        assert history[-1].value == pytest.approx(row["val/loss"])

    # ASHA lets every trial reach step 20; what it stopped after that did not train to 40 (a stopped trial
    # may report once more while Tune ends it).
    for row in rows.values():
        assert row["step"] == 40 if row["status"] == COMPLETED else (20 <= row["step"] < 40)
    completed = [row for row in rows.values() if row["status"] == COMPLETED]
    assert completed, rows
    best = min(completed, key=lambda row: row["val/loss"])

    version = client.get_model_version_by_alias("rsvlm-tiny-moe_lora", "candidate")
    assert version.run_id == best["mlflow_run_id"]
    assert parent.data.tags["rsvlm.sweep.best_trial"] == best["trial_id"]
    assert parent.data.metrics["best/val/loss"] == pytest.approx(best["val/loss"])
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert artifacts == {"sweep/sweep_results.csv", "sweep/sweep_results.json", "sweep/sweep_plot.png"}
    # The winner's model is a logged model of its own trial's run (the version is made from it).
    assert client.get_logged_model(model_id_of(version)).source_run_id == best["mlflow_run_id"]
    assert "best trial" in done.stdout and "registered: rsvlm-tiny-moe_lora version 1" in done.stdout

    # A finished sweep is not run again (that would only register the same winner twice).
    again = _run_job(args, timeout=120)
    assert again.returncode != 0 and "already finished" in again.stderr


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from rsvlm.config import compose
    from rsvlm.data.prepare import prepare_dataset

    workdir = tmp_path_factory.mktemp("sweep-data")
    prepare_dataset(compose([f"workdir={workdir}", "sweep=smoke"]).data)
    return workdir / "data" / "prepared"


def test_a_failing_trial_is_retried_then_reported_while_the_others_finish(tmp_path, prepared, local_ray):
    from rsvlm.config import compose
    from rsvlm.tracking.lifecycle import RunRecord, read_record
    from rsvlm.tune.sweep import run_sweep

    # 16 tokens cannot hold the image and the answer, so that trial finds no sample with a label to learn.
    job = compose([f"workdir={tmp_path}", "sweep=smoke", f"data.uri={prepared}", "sweep.name=failing",
                   "sweep.scheduler=fifo", "~sweep.space.strategy", "+sweep.space.data.max_length={grid:[16,192]}",
                   "train.max_steps=20", "sweep.max_trial_failures=1", "tracking.system_metrics_interval_s=0"])
    result = run_sweep(job)

    by_length = {o.values["data.max_length"]: o for o in result.trials}
    failed, good = by_length[16], by_length[192]
    assert failed.status == FAILED and "had every label masked" in failed.error
    assert good.status == COMPLETED and result.best.trial_id == good.trial_id and result.version == "1"
    # Tune started the failing trial twice (max_trial_failures=1), into the same run and MLflow run.
    record = read_record(_storage(job), f"{tmp_path}/ray_results/{failed.run_name}/rsvlm_run.json")
    assert isinstance(record, RunRecord) and record.starts == 2 and not record.finished
    client, runs = _runs(job.tracking.uri)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result.parent_run_id]
    assert sorted(r.info.status for r in children) == ["FAILED", "FINISHED"]
    assert [r.data.params["data.max_length"] for r in children if r.info.status == "FAILED"] == ["16"]
    rows = {row["trial_id"]: row for row in _table(tmp_path, "failing")}
    assert rows[failed.trial_id]["status"] == FAILED and "had every label masked" in rows[failed.trial_id]["error"]


def _storage(job):
    from rsvlm.data.storage import Storage

    return Storage(job.storage)


def test_an_interrupted_sweep_resumes_under_the_same_name(tmp_path, prepared, local_ray):
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["sweep=smoke", f"workdir={tmp_path}", f"data.uri={prepared}", f"tracking.uri={tracking_uri}",
            "sweep.name=resumable", "sweep.scheduler=fifo", "~sweep.space.strategy.num_experts",
            "sweep.space.strategy.rank={grid:[8]}", "train.max_steps=60", "tracking.system_metrics_interval_s=0"]
    process = subprocess.Popen(SWEEP_JOB + args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not list((tmp_path / "ray_results").glob("resumable-*/checkpoint_step0000020")):
            assert process.poll() is None and time.monotonic() < deadline, "no checkpoint before the sweep ended"
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)  # what Ctrl-C does
        stdout, stderr = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stdout[-2000:] + stderr[-2000:]
    assert "run it again with sweep.name=resumable to resume" in stderr

    done = _run_job(args)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "resuming (start 2)" in done.stdout

    client, runs = _runs(tracking_uri)
    parents = [r for r in runs if r.data.tags.get("rsvlm.job") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    # One MLflow run for the trial, though it ran in two processes.
    assert len(children) == 1 == len(runs) - 1
    assert {r.data.tags["rsvlm.trial_id"] for r in children} == {row["trial_id"] for row in _table(tmp_path,
                                                                                                  "resumable")}
    resumed = []
    for folder in (tmp_path / "ray_results").glob("resumable-*"):
        record = json.loads((folder / "rsvlm_run.json").read_text())
        assert record["finished"]
        state = json.loads((folder / "checkpoint_step0000060" / "trainer_state.json").read_text())
        if record["starts"] == 2:
            resumed.append(state["resumed_from_step"])
    # The interrupted trial went on from its checkpoint, not from step 0.
    assert resumed and all(step >= 20 for step in resumed), resumed
    assert str(client.get_model_version_by_alias("rsvlm-tiny-moe_lora", "candidate").version) == "1"


def test_optuna_sweeps_rank_top_k_and_learning_rate(tmp_path, prepared, local_ray):
    from rsvlm.config import compose
    from rsvlm.tune.sweep import run_sweep

    job = compose([f"workdir={tmp_path}", "sweep=smoke", f"data.uri={prepared}", "sweep.name=optuna",
                   "sweep.search=optuna", "sweep.num_samples=2", "sweep.scheduler=fifo", "~sweep.space.strategy",
                   "+sweep.space.strategy.top_k={choice:[null,1]}", "+sweep.space.strategy.rank={choice:[8,16]}",
                   "+sweep.space.optim.lr={loguniform:[1e-3,1e-2]}", "train.max_steps=10",
                   "train.checkpoint_every=5", "tracking.system_metrics_interval_s=0"])
    result = run_sweep(job)

    assert len(result.trials) == 2 and all(o.status == COMPLETED for o in result.trials)
    for outcome in result.trials:
        assert outcome.values["strategy.top_k"] in (None, 1) and outcome.values["strategy.rank"] in (8, 16)
        assert 1e-3 <= outcome.values["optim.lr"] <= 1e-2 and outcome.step == 10
    client, runs = _runs(job.tracking.uri)
    by_run = {r.info.run_id: r for r in runs}
    for outcome in result.trials:
        params = by_run[outcome.run_id].data.params
        assert float(params["optim.lr"]) == pytest.approx(outcome.values["optim.lr"])
        assert params["strategy.top_k"] == str(outcome.values["strategy.top_k"])
    assert result.best.metric == min(o.metric for o in result.trials) and result.version == "1"
