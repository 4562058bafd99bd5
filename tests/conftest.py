"""Shared fixtures: a job config in a temporary workdir, and one local Ray for the session."""

from __future__ import annotations

import os

import pytest

# Each ray.train.report waits for the controller's poll (2 s by default); tests need not wait that long.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def compose_job(tmp_path):
    """``compose_job(*overrides)`` → a typed JobConfig whose workdir is this test's temporary folder."""
    from rsvlm.config import compose

    def make(*overrides: str):
        return compose([f"workdir={tmp_path}", *overrides])

    return make


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray instance for the whole session (starting Ray takes seconds)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()
