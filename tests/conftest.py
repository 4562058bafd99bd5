"""Shared fixtures: a job config in a temporary workdir, and one local Ray for the session."""

from __future__ import annotations

import gc
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


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray instance for the whole session (starting Ray takes seconds).

    Job processes that tests start run Ray instances of their own beside it, as two users' jobs on one
    machine would (``rsvlm.ray_session.start_local_ray`` keeps each instance's processes to itself).
    """
    import ray

    from rsvlm.ray_session import start_local_ray

    if not ray.is_initialized():
        start_local_ray(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        os.environ.pop("RAY_ADDRESS", None)  # see _jobs_start_their_own_ray
    yield ray
    # Ray Data iterators a test left unfinished (a run that ended mid-epoch in local mode) hold prefetch
    # threads; collected before shutdown, they stop, instead of touching the shut-down worker, which makes the
    # process exit 1 with no test summary.
    gc.collect()
    ray.shutdown()


@pytest.fixture(autouse=True)
def _jobs_start_their_own_ray():
    """A Ray this session starts (the fixture above, or a library call such as ``run_finetune`` that found none)
    puts its address in ``RAY_ADDRESS``; the job processes later tests start would then join it instead of
    starting their own, as a user's separate jobs do."""
    before = os.environ.get("RAY_ADDRESS")
    yield
    if before is None:
        os.environ.pop("RAY_ADDRESS", None)
