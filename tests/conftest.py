"""Shared fixtures: a job config in a temporary workdir, and one local Ray for the session."""

from __future__ import annotations

import os

import pytest

# Each ray.train.report waits for the controller's poll (2 s by default); tests need not wait that long.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# S3 tests talk to moto's server on 127.0.0.1. Fake credentials, set before Ray starts so its workers inherit
# them, keep every client away from real AWS credential sources (and their slow metadata lookups).
for _name, _value in {"AWS_ACCESS_KEY_ID": "rsvlm-test-key", "AWS_SECRET_ACCESS_KEY": "rsvlm-test-secret",
                      "AWS_DEFAULT_REGION": "us-east-1"}.items():
    os.environ[_name] = _value
os.environ.pop("AWS_PROFILE", None)


@pytest.fixture
def compose_job(tmp_path):
    """``compose_job(*overrides)`` → a typed JobConfig whose workdir is this test's temporary folder."""
    from rsvlm.config import compose

    def make(*overrides: str):
        return compose([f"workdir={tmp_path}", *overrides])

    return make


def _start_session_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray instance for the whole session (starting Ray takes seconds)."""
    import ray

    if not ray.is_initialized():
        _start_session_ray()
    yield ray
    ray.shutdown()


@pytest.fixture
def sole_ray():
    """No Ray of this session while the test runs, for a job process that starts its own.

    With two Ray instances on one machine, Ray Train's placement-group cleaner cannot tell which one is its
    own and fails; the finished trials' CPUs are then never given back, and a sweep's next trials wait for
    them for ever. The session's Ray, if it was running, is started again afterwards.
    """
    import ray

    was_running = ray.is_initialized()
    if was_running:
        ray.shutdown()
    yield
    if was_running:
        _start_session_ray()
