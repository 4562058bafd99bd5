"""Storage on local paths and file:// URIs, and the path-escape rule every image path goes through."""

from __future__ import annotations

import fcntl
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rsvlm.config.storage import StorageConfig
from rsvlm.data.storage import STALE_AFTER_S, STAGING_GRACE_S, Storage, StorageError, join, resolve_inside
from rsvlm.errors import JobError


@pytest.mark.parametrize("relative,expected", [
    ("a.png", "/data/img/a.png"),
    ("sub/dir/b.tif", "/data/img/sub/dir/b.tif"),
    ("./c.png", "/data/img/c.png"),
    ("sub\\d.png", "/data/img/sub/d.png"),
])
def test_resolve_inside_joins_relative_paths(relative, expected):
    assert resolve_inside("/data/img", relative) == expected


@pytest.mark.parametrize("relative", ["", "  ", "../x.png", "a/../../x.png", "/etc/passwd", "\\\\host\\share",
                                      "s3://other/x.png", "C:\\x.png", "a/../b/../../x"])
def test_resolve_inside_refuses_paths_that_could_leave_the_root(relative):
    with pytest.raises(ValueError):
        resolve_inside("/data/img", relative)


def test_uris_keep_their_scheme_when_joined():
    assert join("s3://bucket/prefix/", "img", "a.png") == "s3://bucket/prefix/img/a.png"
    assert resolve_inside("s3://bucket/img", "x/a.png") == "s3://bucket/img/x/a.png"
    assert join("file:///data", "a") == "/data/a"


def test_local_files_and_file_uris_read_write_list(tmp_path):
    storage = Storage()
    storage.write_text(str(tmp_path / "a" / "b.txt"), "hello")
    assert storage.read_text(f"file://{tmp_path}/a/b.txt") == "hello"
    assert storage.is_file(str(tmp_path / "a" / "b.txt")) and not storage.is_file(str(tmp_path / "a"))
    assert storage.exists(str(tmp_path / "a")) and storage.size(str(tmp_path / "a" / "b.txt")) == 5
    storage.write_bytes(str(tmp_path / "a" / "c" / "d.bin"), b"\x00\x01")
    assert storage.list_files(str(tmp_path / "a")) == ["b.txt", "c/d.bin"]
    assert storage.list_files(str(tmp_path / "nothing")) == []
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.endswith(".partial")]


def test_missing_file_and_binary_text_name_the_uri(tmp_path):
    storage = Storage()
    with pytest.raises(FileNotFoundError, match="nope.json"):
        storage.read_text(str(tmp_path / "nope.json"))
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match=r"bin.json: not UTF-8"):
        storage.read_text(str(tmp_path / "bin.json"))


def test_publish_folder_replaces_an_older_version_in_one_step(tmp_path):
    storage, dest = Storage(), tmp_path / "out" / "prepared"
    older: list[str] = []
    for version, names in (("1", ["shard-0.jsonl", "stale.jsonl"]), ("2", ["shard-0.jsonl"])):
        staging = tmp_path / f"staging{version}"
        staging.mkdir()
        for name in names + ["manifest.json"]:
            (staging / name).write_text(version)
        storage.publish_folder(staging, str(dest), last="manifest.json", replaces=older)
        older = names + ["manifest.json"]
    assert storage.list_files(str(dest)) == ["manifest.json", "shard-0.jsonl"]
    assert (dest / "shard-0.jsonl").read_text() == "2"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["prepared"]  # no staged or retired copies left


def test_publish_folder_refuses_a_folder_without_its_last_file(tmp_path):
    (tmp_path / "staging").mkdir()
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        Storage().publish_folder(tmp_path / "staging", str(tmp_path / "dest"), last="manifest.json")
    assert not (tmp_path / "dest").exists()


def test_storage_pickles_without_credentials(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "super-secret-value")
    storage = Storage(StorageConfig(endpoint_url="http://127.0.0.1:1", region="eu-west-1"))
    storage.filesystem("s3://bucket/key")  # creates the S3 clients, which hold the secret
    storage._s3_client()
    assert "super-secret-value" not in repr(storage)
    data = pickle.dumps(storage)
    assert b"super-secret-value" not in data
    restored = pickle.loads(data)
    assert restored.endpoint_url == "http://127.0.0.1:1" and restored.options.region == "eu-west-1"


def test_endpoint_falls_back_to_the_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    assert Storage().endpoint_url == "http://127.0.0.1:9000"
    assert Storage(StorageConfig(endpoint_url="http://minio:9000")).endpoint_url == "http://minio:9000"


def staged_version(tmp_path, name="staging"):
    staging = tmp_path / name
    staging.mkdir()
    (staging / "shard-0.jsonl").write_text("new")
    (staging / "manifest.json").write_text("{}")
    return staging


def test_publish_folder_refuses_a_folder_with_files_it_was_not_told_about(tmp_path):
    dest = tmp_path / "mine"
    (dest / "sub").mkdir(parents=True)
    (dest / "notes.txt").write_text("keep me")
    (dest / "sub" / "data.csv").write_text("keep me too")
    (dest / "manifest.json").write_text("{}")
    with pytest.raises(JobError) as caught:
        Storage().publish_folder(staged_version(tmp_path), str(dest), last="manifest.json",
                                 replaces=["manifest.json"])
    assert str(caught.value).startswith(f"{dest}: exists and holds 2 file(s) this job did not write "
                                        "(notes.txt, sub/data.csv)")
    assert (dest / "notes.txt").read_text() == "keep me" and (dest / "sub" / "data.csv").read_text() == "keep me too"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "staging"]  # nothing staged or retired left


def test_publish_folder_refuses_a_regular_file_and_keeps_it(tmp_path):
    dest = tmp_path / "output"
    dest.write_text("a file of the user's")
    with pytest.raises(JobError, match=f"^{dest}: is a file, not a folder"):
        Storage().publish_folder(staged_version(tmp_path), str(dest), last="manifest.json")
    assert dest.read_text() == "a file of the user's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["output", "staging"]


def test_publish_folder_fills_an_empty_folder(tmp_path):
    dest = tmp_path / "empty"
    dest.mkdir()
    Storage().publish_folder(staged_version(tmp_path), str(dest), last="manifest.json")
    assert Storage().list_files(str(dest)) == ["manifest.json", "shard-0.jsonl"]


# A job that stages a publish of DEST and is killed (SIGKILL: no cleanup runs) while its folder is there.
KILLED_WHILE_STAGING = """
import os, signal, sys
from rsvlm.data.storage import Storage
with Storage().staging(sys.argv[1]) as folder:
    (folder / "shard-00000.jsonl").write_text("half written")
    os.kill(os.getpid(), signal.SIGKILL)
"""
# A job that stages a publish of DEST and waits (alive, holding its lock) until its stdin closes.
STAGING_AND_WAITING = """
import sys
from rsvlm.data.storage import Storage
with Storage().staging(sys.argv[1]) as folder:
    print(folder.name, flush=True)
    sys.stdin.read()
"""


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_staging_sweeps_what_killed_jobs_left_and_never_a_live_jobs_folder(tmp_path):
    dest = tmp_path / "prepared"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    killed = subprocess.run([sys.executable, "-c", KILLED_WHILE_STAGING, str(dest)], env=env, timeout=60)
    assert killed.returncode == -signal.SIGKILL
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert len(leftovers) == 2 and leftovers[0].startswith(".prepared.rsvlm-staging-")  # the folder and its lock
    live = subprocess.Popen([sys.executable, "-c", STAGING_AND_WAITING, str(dest)], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        live_name = live.stdout.readline().strip()
        # Old enough to be swept if its owner were gone; versions before the lock left .partial / .old folders.
        for lock in tmp_path.glob(".prepared.rsvlm-staging-*.lock"):
            age(lock, STAGING_GRACE_S + 5)
        legacy_old, legacy_young = tmp_path / f".prepared.{'a' * 32}.partial", tmp_path / f".prepared.{'b' * 32}.old"
        for legacy in (legacy_old, legacy_young):
            legacy.mkdir()
            (legacy / "shard-00000.jsonl").write_text("x")
        age(legacy_old, STALE_AFTER_S + 60)
        (tmp_path / ".prepared.notes").write_text("not ours")  # looks close, is not a staging leftover
        with Storage().staging(str(dest)) as mine:
            assert mine.parent == tmp_path and mine.name.startswith(f".prepared.rsvlm-staging-{os.getpid()}-")
            names = {p.name for p in tmp_path.iterdir()}
        assert not (set(leftovers) & names)  # the killed job's folder and lock are gone
        assert legacy_old.name not in names and legacy_young.name in names
        assert {live_name, f"{live_name}.lock", ".prepared.notes"} <= names  # the live job's folder is kept
        assert (tmp_path / live_name).is_dir()
    finally:
        live.stdin.close()
        live.wait(timeout=60)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".prepared.notes", legacy_young.name])


def test_a_lock_younger_than_the_grace_period_is_kept(tmp_path):
    dest = tmp_path / "prepared"
    lock = tmp_path / ".prepared.rsvlm-staging-1-abc.lock"
    lock.write_text("")  # just created by a job that has not locked it yet
    (tmp_path / ".prepared.rsvlm-staging-1-abc").mkdir()
    with Storage().staging(str(dest)):
        pass
    assert lock.exists() and (tmp_path / ".prepared.rsvlm-staging-1-abc").is_dir()
    age(lock, STAGING_GRACE_S + 5)
    held = os.open(lock, os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a live owner (this process)
    try:
        with Storage().staging(str(dest)):
            pass
        assert lock.exists()
    finally:
        os.close(held)
    with Storage().staging(str(dest)):
        pass
    assert not lock.exists() and not (tmp_path / ".prepared.rsvlm-staging-1-abc").exists()


def test_a_dead_s3_endpoint_is_one_line_naming_it_and_fails_fast(monkeypatch):
    from rsvlm.dev.services import free_port

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "super-secret-value")
    endpoint = f"http://127.0.0.1:{free_port()}"
    storage = Storage(StorageConfig(endpoint_url=endpoint))
    calls = [lambda: storage.read_bytes("s3://bucket/x.json"), lambda: storage.is_file("s3://bucket/x.json"),
             lambda: storage.list_files("s3://bucket/prefix"), lambda: storage.write_text("s3://bucket/y", "y")]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(StorageError) as caught:
            call()
        assert time.monotonic() - started < 20
        assert str(caught.value) == (f"{endpoint}: cannot connect to the S3 endpoint "
                                     "(check storage.endpoint_url or AWS_ENDPOINT_URL)")
        assert isinstance(caught.value, OSError) and isinstance(caught.value, JobError)
        assert "super-secret-value" not in str(caught.value)
        assert pickle.loads(pickle.dumps(caught.value)).why == "cannot connect to the S3 endpoint"
