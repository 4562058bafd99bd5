"""Hydra multirun of jobs/finetune.py: one MLflow run per combination, grouped by the multirun's id."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_finetune_multirun_logs_each_combination_as_a_tagged_run(tmp_path, local_ray):
    from rsvlm.config import compose
    from rsvlm.data.prepare import prepare_dataset

    small = ["data.synthetic.num_train_images=40", "data.synthetic.num_test_images=2"]
    prepare_dataset(compose([f"workdir={tmp_path}", *small]).data)
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    done = subprocess.run(
        [sys.executable, "jobs/finetune.py", "-m", "strategy=lora,moe_lora", "strategy.rank=8,16",
         f"workdir={tmp_path}", f"tracking.uri={tracking_uri}", *small, "scaling=local", "train.max_steps=4",
         "train.log_every=2", "train.checkpoint_every=0", "train.val_batches=0", "tracking.system_metrics_interval_s=0"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    client = MlflowClient(tracking_uri=tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("rsvlm").experiment_id])
    assert len(runs) == 4
    multiruns = {r.data.tags.get("rsvlm.multirun") for r in runs}
    assert len(multiruns) == 1 and None not in multiruns
    (multirun,) = multiruns
    # The id names the multirun's folder, where Hydra keeps each job's config.
    assert (tmp_path / "multirun" / multirun / "multirun.yaml").is_file()
    # The UI's filter finds exactly these runs.
    found = client.search_runs([runs[0].info.experiment_id], f"tags.`rsvlm.multirun` = '{multirun}'")
    assert len(found) == 4
    combinations = {(r.data.params["strategy.name"], r.data.params["strategy.rank"]) for r in runs}
    assert combinations == {("lora", "8"), ("lora", "16"), ("moe_lora", "8"), ("moe_lora", "16")}
    assert sorted(r.data.tags["rsvlm.multirun.job"] for r in runs) == ["0", "1", "2", "3"]
    for run in runs:
        overrides = run.data.tags["rsvlm.multirun.overrides"]
        assert f"strategy={run.data.params['strategy.name']}" in overrides
        assert f"strategy.rank={run.data.params['strategy.rank']}" in overrides
        assert run.info.status == "FINISHED"
    # Distinct run names even for jobs started within the same second.
    assert len({r.info.run_name for r in runs}) == 4
