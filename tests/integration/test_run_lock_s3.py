"""rsvlm.train.run_lock's S3 lease against a real S3 API (moto's server on 127.0.0.1): conditional create,
refusal, take-over of an expired lease (one winner), heartbeat renewal, release, a lease lost to another job."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import boto3
import pytest

from rsvlm.config.storage import StorageConfig
from rsvlm.data.storage import Storage
from rsvlm.errors import JobError
from rsvlm.train import run_lock
from rsvlm.train.run_lock import RunInUseError

pytestmark = pytest.mark.integration

KEY, NAME = "train.run_name", "shared"


@pytest.fixture
def storage(s3_endpoint):
    return Storage(StorageConfig(endpoint_url=s3_endpoint))


@pytest.fixture
def client(s3_endpoint):
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


def _object(client, uri: str):
    bucket, _, key = uri[len("s3://"):].partition("/")
    try:
        return json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    except client.exceptions.NoSuchKey:
        return None


def _wait_for(condition, timeout_s: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"no {what} within {timeout_s} s")


def test_create_refuse_release_then_take_again(storage, client, s3_prefix):
    folder = f"{s3_prefix}/{NAME}"
    first = run_lock.acquire(storage, folder, KEY, NAME, ttl_s=30)
    lease = _object(client, run_lock.lock_uri(folder))
    assert lease["owner"]["pid"] == os.getpid() and lease["ttl_s"] == 30

    with pytest.raises(RunInUseError) as refused:
        run_lock.acquire(storage, folder, KEY, NAME, ttl_s=30)
    message = str(refused.value)
    assert message.startswith(f"{KEY}={NAME}: run is in use by pid {os.getpid()} on host ")
    assert "its lease expires at" in message and run_lock.lock_uri(folder) in message
    assert message.endswith(f"(wait for it to finish, or choose another {KEY})") and "\n" not in message
    assert _object(client, run_lock.lock_uri(folder))["token"] == lease["token"]  # the refused job changed nothing

    first.release()
    assert _object(client, run_lock.lock_uri(folder)) is None
    with run_lock.hold(storage, folder, KEY, NAME, ttl_s=30) as second:
        assert _object(client, second.uri)["token"] != lease["token"]
    assert _object(client, run_lock.lock_uri(folder)) is None


def _write_lease(client, uri: str, ttl_s: float, host: str = "elsewhere", pid: int = 4242, machine: str = "") -> None:
    bucket, _, key = uri[len("s3://"):].partition("/")
    owner = {"host": host, "pid": pid, "started": time.time(), "machine": machine}
    client.put_object(Bucket=bucket, Key=key, Body=json.dumps({"owner": owner, "token": "old", "ttl_s": ttl_s}))


def test_an_expired_lease_is_taken_over(storage, client, s3_prefix, caplog):
    folder = f"{s3_prefix}/{NAME}"
    _write_lease(client, run_lock.lock_uri(folder), ttl_s=3)  # a job elsewhere that stopped renewing
    with pytest.raises(RunInUseError, match="pid 4242 on host elsewhere"):
        run_lock.acquire(storage, folder, KEY, NAME)
    time.sleep(4.2)  # the server's clock passes the lease's last write + 3 s

    with caplog.at_level(logging.WARNING, logger="rsvlm.train.run_lock"):
        lock = run_lock.acquire(storage, folder, KEY, NAME, ttl_s=30)
    assert any("took over" in r.getMessage() and "expired" in r.getMessage() for r in caplog.records)
    assert _object(client, lock.uri)["owner"]["pid"] == os.getpid()
    lock.release()


def test_of_two_jobs_taking_over_an_expired_lease_one_wins(storage, client, s3_prefix, monkeypatch):
    """The other job takes the lease over between our read of the expired lease and our conditional write:
    our write fails (the ETag changed), we read the winner's live lease, and we are refused."""
    folder = f"{s3_prefix}/{NAME}"
    _write_lease(client, run_lock.lock_uri(folder), ttl_s=1)
    time.sleep(2.2)
    real_client = run_lock._s3_client
    winner: list = []

    class Racing:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def get_object(self, **kwargs):
            response = self.inner.get_object(**kwargs)
            if not winner:
                winner.append(run_lock.acquire(storage, folder, KEY, NAME, ttl_s=30))  # the other job
            return response

    calls = iter([lambda s: Racing(real_client(s))])
    monkeypatch.setattr(run_lock, "_s3_client", lambda s: next(calls, real_client)(s))

    with pytest.raises(RunInUseError, match=f"pid {os.getpid()}"):
        run_lock.acquire(storage, folder, KEY, NAME, ttl_s=30)
    assert len(winner) == 1
    assert _object(client, run_lock.lock_uri(folder))["token"] == winner[0]._token
    winner[0].release()


def test_the_heartbeat_keeps_a_lease_alive_past_its_first_expiry(storage, client, s3_prefix):
    folder = f"{s3_prefix}/{NAME}"
    with run_lock.hold(storage, folder, KEY, NAME, ttl_s=2, heartbeat_s=0.4) as lock:
        time.sleep(4.5)  # more than twice the ttl
        with pytest.raises(RunInUseError, match="its lease expires at"):
            run_lock.acquire(storage, folder, KEY, NAME, ttl_s=2)
        assert _object(client, lock.uri)["renewals"] >= 5
        assert not lock.lost
    assert _object(client, run_lock.lock_uri(folder)) is None


def test_a_lease_of_a_dead_process_of_this_machine_is_taken_over_at_once(storage, client, s3_prefix, s3_endpoint):
    folder = f"{s3_prefix}/{NAME}"
    holder = textwrap.dedent(f"""
        import sys, time
        from rsvlm.config.storage import StorageConfig
        from rsvlm.data.storage import Storage
        from rsvlm.train import run_lock

        run_lock.acquire(Storage(StorageConfig(endpoint_url={s3_endpoint!r})), {folder!r}, "train.run_name", "x",
                         ttl_s=600)
        print("locked", flush=True)
        time.sleep(600)
    """)
    process = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        assert process.stdout.readline().strip() == "locked", process.stderr.read()
        with pytest.raises(RunInUseError, match=f"pid {process.pid} "):
            run_lock.acquire(storage, folder, KEY, NAME)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    started = time.monotonic()
    lock = run_lock.acquire(storage, folder, KEY, NAME)  # its lease has 10 minutes left, but its owner is gone
    assert time.monotonic() - started < 10
    assert _object(client, lock.uri)["owner"]["pid"] == os.getpid()
    lock.release()


def test_a_lease_lost_to_another_job_fails_the_holder_and_is_not_deleted_by_it(storage, client, s3_prefix):
    folder = f"{s3_prefix}/{NAME}"
    with pytest.raises(JobError, match="taken over by another job"):
        # A heartbeat slower than the ttl: the lease expires between renewals, as when S3 is out of reach.
        with run_lock.hold(storage, folder, KEY, NAME, ttl_s=1, heartbeat_s=3) as lock:
            other = _wait_for(lambda: _try_acquire(storage, folder), what="take-over")
            _wait_for(lambda: lock.lost, what="lost lease")
    assert _object(client, other.uri)["token"] == other._token  # the loser's release left the winner's lease
    other.release()


def _try_acquire(storage, folder):
    try:
        return run_lock.acquire(storage, folder, KEY, NAME, ttl_s=30)
    except RunInUseError:
        return None
