"""Storage on local paths and file:// URIs, and the path-escape rule every image path goes through."""

from __future__ import annotations

import pickle

import pytest

from rsvlm.config.schema import StorageConfig
from rsvlm.data.storage import Storage, join, resolve_inside


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
    for version, names in (("1", ["shard-0.jsonl", "stale.jsonl"]), ("2", ["shard-0.jsonl"])):
        staging = tmp_path / f"staging{version}"
        staging.mkdir()
        for name in names + ["manifest.json"]:
            (staging / name).write_text(version)
        storage.publish_folder(staging, str(dest), last="manifest.json")
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
