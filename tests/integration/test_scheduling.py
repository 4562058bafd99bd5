"""Workers the cluster cannot place fail the job in seconds, naming what is missing (Ray Train would wait
for ever)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from rsvlm.config.training import ScalingConfig
from rsvlm.errors import JobError
from rsvlm.train.distributed import check_resources

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def test_the_cluster_is_judged_per_node_and_what_it_lacks_is_named(local_ray):
    offered_cpus = local_ray.cluster_resources()["CPU"]
    check_resources(ScalingConfig(num_workers=2, cpus_per_worker=offered_cpus / 2), wait_s=0)
    with pytest.raises(JobError, match=r"needs 1 CPU, 1 GPU on one node, and the cluster has room for 0 "
                                       rf"\(it offers {offered_cpus:g} CPU\)"):
        check_resources(ScalingConfig(num_workers=1, use_gpu=True, cpus_per_worker=1), wait_s=0)
    started = time.monotonic()
    with pytest.raises(JobError, match=rf"room for {int(offered_cpus)} .* after waiting 1 s"):
        check_resources(ScalingConfig(num_workers=int(offered_cpus) + 1, cpus_per_worker=1), wait_s=1, poll_s=0.2)
    assert time.monotonic() - started >= 1


def test_finetune_on_gpu_workers_without_gpus_fails_in_seconds(tmp_path):
    started = time.monotonic()
    done = subprocess.run([sys.executable, "jobs/finetune.py", f"workdir={tmp_path}", "scaling=gpu1",
                           "data.synthetic.num_train_images=8", "data.synthetic.num_test_images=2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - started
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: scaling.num_workers=1: each worker needs 8 CPU, 1 GPU on one node")
    assert "scaling=cpu1" in last
    # Ray's start-up and nothing else: it used to wait for a GPU for ever.
    assert elapsed < 120, elapsed
