"""Two rsvlm jobs on one machine, each with its own local Ray, while this test session's Ray runs too.

Ray Train V2's placement-group cleaner looks its cluster up without an address; with several local Ray
instances it used to ask another job's, conclude its own controller was dead and remove the live run's
placement group ("Destroying worker since its placement group was removed"). rsvlm starts each local Ray
with its address pinned in the environment its processes inherit (``rsvlm.ray_session.start_local_ray``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SMALL = ["data.synthetic.num_train_images=40", "data.synthetic.num_test_images=2"]


def test_two_finetunes_with_their_own_local_ray_both_finish(tmp_path, local_ray):
    from rsvlm.config import compose
    from rsvlm.data.prepare import prepare_dataset

    assert local_ray.is_initialized()  # a third Ray instance on the machine: this session's
    jobs = []
    for name in ("first", "second"):
        workdir = tmp_path / name
        prepare_dataset(compose([f"workdir={workdir}", *SMALL]).data)
        command = [sys.executable, "jobs/finetune.py", f"workdir={workdir}", *SMALL, "scaling=cpu1",
                   "scaling.cpus_per_worker=0.5", "train.max_steps=60", "train.log_every=20",
                   "train.checkpoint_every=20", "train.val_batches=0", "tracking.system_metrics_interval_s=0",
                   f"train.run_name={name}"]
        jobs.append((workdir, subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                               text=True)))
    for workdir, job in jobs:
        output, _ = job.communicate(timeout=900)
        assert job.returncode == 0, output[-4000:]
        assert "placement group was removed" not in output
        client = MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlflow.db")
        (run,) = client.search_runs([client.get_experiment_by_name("rsvlm").experiment_id])
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [20, 40, 60]


# Run in a job-like process of its own: its local Ray, an actor, and a task that asks the state API whether
# the actor lives, the way Ray Train's placement-group cleaner asks about its controller.
_ASK_STATE_API = """
import ray
from ray.train.v2._internal.state.util import is_actor_alive
from rsvlm.ray_session import ensure_ray

ensure_ray()

@ray.remote(num_cpus=0)
class Controller:
    def ping(self):
        return True

controller = Controller.remote()
ray.get(controller.ping.remote())

@ray.remote(num_cpus=0)
def cleaner_asks(actor_id):
    return bool(is_actor_alive(actor_id, timeout=20))

print("alive:", ray.get(cleaner_asks.remote(controller._actor_id.hex())))
"""


def test_a_jobs_ray_processes_ask_their_own_cluster_when_another_runs(local_ray):
    assert local_ray.is_initialized()  # another Ray instance on the machine
    done = subprocess.run([sys.executable, "-c", _ASK_STATE_API], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "alive: True" in done.stdout


def test_starting_a_local_ray_leaves_the_drivers_environment_as_it_was(local_ray):
    import os

    # The session's Ray was started by start_local_ray: the jobs a test starts must not find its address.
    assert "RAY_ADDRESS" not in os.environ and "RAY_GCS_SERVER_PORT" not in os.environ
