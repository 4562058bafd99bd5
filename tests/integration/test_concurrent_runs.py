"""Two jobs/finetune.py with the same train.run_name at the same time: one trains, the other is refused.

The refused job stops at the run's lock, before Ray, the MLflow run record or the checkpoints: one MLflow run
and one model version exist afterwards, and the run's folder holds one job's checkpoints.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_two_jobs_with_one_run_name_at_once_one_trains_the_other_is_refused(tmp_path):
    from rsvlm.config import compose
    from rsvlm.data.prepare import prepare_dataset

    small = ["data.synthetic.num_train_images=40", "data.synthetic.num_test_images=2"]
    prepare_dataset(compose([f"workdir={tmp_path}", *small]).data)
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    command = [sys.executable, "jobs/finetune.py", f"workdir={tmp_path}", f"tracking.uri={tracking_uri}", *small,
               "scaling=local", "train.max_steps=30", "train.log_every=10", "train.checkpoint_every=10",
               "train.val_batches=0", "tracking.system_metrics_interval_s=0", "train.run_name=same"]
    # Both start at once: whichever locks the run first trains; the other gets there while it still runs.
    jobs = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [job.communicate(timeout=600) for job in jobs]
    codes = [job.returncode for job in jobs]
    report = "\n\n".join(f"exit {code}\n{out[-2000:]}\n{err[-3000:]}" for code, (out, err) in zip(codes, outputs))
    assert sorted(code == 0 for code in codes) == [False, True], report

    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    refusal = [line for line in outputs[loser][1].splitlines() if "run is in use" in line]
    assert len(refusal) == 1, report
    assert (f"train.run_name=same: run is in use by pid {jobs[winner].pid} on host " in refusal[0]
            and "(wait for it to finish, or choose another train.run_name)" in refusal[0]), refusal[0]
    # Refused before it started anything: no Ray of its own, no training.
    assert "step " not in outputs[loser][0] and "Started a local Ray instance" not in outputs[loser][1], report
    assert "registered: rsvlm-tiny-lora version 1" in outputs[winner][0], report

    client = MlflowClient(tracking_uri=tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("rsvlm").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    (run,) = runs
    versions = client.search_model_versions("name='rsvlm-tiny-lora'")
    assert [(str(v.version), v.run_id) for v in versions] == [("1", run.info.run_id)]
    # Each step logged once: by one job.
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert sorted(steps) == sorted(set(steps)) and steps

    run_dir = tmp_path / "ray_results" / "same"
    record = json.loads((run_dir / "rsvlm_run.json").read_text())
    assert record["starts"] == 1 and record["finished"] and record["mlflow_run_id"] == run.info.run_id
    assert not (run_dir / "rsvlm_run.lock").exists()  # released at the end


def test_a_sweep_whose_name_is_in_use_is_refused_before_it_starts(tmp_path):
    from rsvlm.config import compose
    from rsvlm.data.storage import Storage
    from rsvlm.train import run_lock
    from rsvlm.train.run_lock import RunInUseError
    from rsvlm.tune.sweep import run_sweep

    job = compose([f"workdir={tmp_path}", "sweep=smoke", "sweep.name=busy"])
    storage = Storage(job.storage)
    with run_lock.hold(storage, storage.join(job.sweep.storage_uri, "busy"), "sweep.name", "busy"):
        with pytest.raises(RunInUseError, match=r"^sweep.name=busy: run is in use by pid \d+ .*choose another "
                                                r"sweep.name\)$"):
            run_sweep(job)  # no data was prepared: refused before it looked for any, and before Ray
    assert not (Path(job.sweep.storage_uri) / "busy" / "rsvlm_sweep.json").exists()
