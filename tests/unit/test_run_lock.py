"""rsvlm.train.run_lock on a local folder: one holder at a time, across processes, released however it ends.

The S3 lease is tested against a real S3 server in tests/integration/test_run_lock_s3.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from rsvlm.data.storage import Storage
from rsvlm.errors import JobError
from rsvlm.train import run_lock
from rsvlm.train.run_lock import RunInUseError

# A process that takes the lock, says so, and holds it until its stdin closes (or it is killed).
HOLDER = textwrap.dedent("""
    import sys
    from rsvlm.data.storage import Storage
    from rsvlm.train import run_lock

    lock = run_lock.acquire(Storage(), sys.argv[1], "train.run_name", "shared")
    print("locked", flush=True)
    sys.stdin.read()
    lock.release()
    print("released", flush=True)
""")


@pytest.fixture
def holder(tmp_path):
    """``start(folder)``: a holder process with the lock taken; it is killed at the end of the test."""
    started: list[subprocess.Popen] = []

    def start(folder) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started.append(process)
        line = process.stdout.readline().strip()
        assert line == "locked", line + process.stderr.read()
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def test_second_holder_in_another_process_is_refused_with_the_owner(tmp_path, holder):
    folder = tmp_path / "runs" / "shared"
    process = holder(folder)

    with pytest.raises(RunInUseError) as refused:
        run_lock.acquire(Storage(), str(folder), "train.run_name", "shared")
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("train.run_name=shared: run is in use by ")
    assert f"pid {process.pid} on host " in message and " since " in message
    assert "(wait for it to finish, or choose another train.run_name)" in message
    assert isinstance(refused.value, JobError)


def test_released_when_the_holder_releases_and_exits(tmp_path, holder):
    folder = tmp_path / "shared"
    process = holder(folder)
    stdout, _ = process.communicate("", timeout=30)  # stdin closed: it releases and exits
    assert process.returncode == 0 and stdout.strip() == "released"
    assert not (folder / run_lock.LOCK_FILE).exists()

    lock = run_lock.acquire(Storage(), str(folder), "train.run_name", "shared")
    owner = json.loads((folder / run_lock.LOCK_FILE).read_text())
    assert owner["pid"] == os.getpid()
    lock.release()


def test_released_by_the_os_when_the_holder_is_killed(tmp_path, holder):
    folder = tmp_path / "shared"
    process = holder(folder)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    # The dead holder's file is still there, with its owner in it: the lock, not the file, is what counts.
    assert json.loads((folder / run_lock.LOCK_FILE).read_text())["pid"] == process.pid

    with run_lock.hold(Storage(), str(folder), "train.run_name", "shared") as lock:
        assert lock.owner.pid == os.getpid()
        assert json.loads((folder / run_lock.LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (folder / run_lock.LOCK_FILE).exists()


def test_one_holder_in_one_process_too_and_hold_releases_on_an_exception(tmp_path):
    folder = str(tmp_path / "run")
    with pytest.raises(ValueError, match="boom"):
        with run_lock.hold(Storage(), folder, "sweep.name", "run"):
            with pytest.raises(RunInUseError, match=r"^sweep.name=run: run is in use by pid \d+ .*choose another "
                                                    r"sweep.name\)$"):
                run_lock.acquire(Storage(), folder, "sweep.name", "run")
            raise ValueError("boom")
    run_lock.acquire(Storage(), folder, "sweep.name", "run").release()


def test_owner_is_dead_here_only_for_a_gone_process_of_this_machine():
    me = run_lock.Owner.current()
    assert not me.is_dead_here()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert run_lock.Owner(me.host, gone.pid, me.started, me.machine).is_dead_here()
    # Elsewhere (another host, another boot or pid namespace) a pid says nothing: never taken for dead.
    assert not run_lock.Owner("elsewhere", gone.pid, me.started, me.machine).is_dead_here()
    assert not run_lock.Owner(me.host, gone.pid, me.started, "other-boot/1").is_dead_here()
    assert not run_lock.Owner(me.host, gone.pid, me.started, "").is_dead_here()


def test_a_run_folder_the_lock_made_is_removed_when_it_stays_empty(tmp_path):
    from rsvlm.data.storage import Storage
    from rsvlm.train import run_lock

    storage = Storage()
    with run_lock.hold(storage, str(tmp_path / "empty-run"), "train.run_name", "empty-run"):
        assert (tmp_path / "empty-run").is_dir()
    assert not (tmp_path / "empty-run").exists()
    with run_lock.hold(storage, str(tmp_path / "used-run"), "train.run_name", "used-run"):
        (tmp_path / "used-run" / "rsvlm_run.json").write_text("{}")
    assert (tmp_path / "used-run" / "rsvlm_run.json").is_file()
    (tmp_path / "existing").mkdir()
    with run_lock.hold(storage, str(tmp_path / "existing"), "train.run_name", "existing"):
        pass
    assert (tmp_path / "existing").is_dir()  # not made by the lock: left as it was
