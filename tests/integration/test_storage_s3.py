"""Storage against a real S3 API (moto's server on 127.0.0.1): reads, writes, listing, atomic publishing."""

from __future__ import annotations

import pytest

from rsvlm.config.storage import StorageConfig
from rsvlm.data.storage import PUBLISH_MARKER, Storage


@pytest.fixture
def storage(s3_endpoint):
    return Storage(StorageConfig(endpoint_url=s3_endpoint))


@pytest.fixture
def prefix(s3_prefix):
    return s3_prefix


def test_write_read_list_on_s3(storage, prefix):
    storage.write_text(f"{prefix}/a/b.txt", "hello")
    storage.write_bytes(f"{prefix}/a/c/d.bin", b"\x00\x01")
    assert storage.read_text(f"{prefix}/a/b.txt") == "hello"
    assert storage.is_file(f"{prefix}/a/b.txt") and not storage.is_file(f"{prefix}/a")
    assert storage.exists(f"{prefix}/a") and storage.size(f"{prefix}/a/c/d.bin") == 2
    assert storage.list_files(f"{prefix}/a") == ["b.txt", "c/d.bin"]
    assert storage.list_files(f"{prefix}/nothing") == []


def test_missing_object_names_the_uri(storage, prefix):
    with pytest.raises(FileNotFoundError, match=f"{prefix}/nope.json"):
        storage.read_bytes(f"{prefix}/nope.json")


def test_publish_folder_writes_the_manifest_last_and_removes_stale_files(storage, prefix, tmp_path):
    dest = f"{prefix}/prepared"
    writes: list[str] = []
    original = storage.write_bytes

    def recording_write(uri, data):
        # At the moment any file is written, the manifest of this version must not be there yet (the marker
        # of a publish in progress comes first, while the older version is still whole).
        writes.append(uri.rsplit("/", 1)[1])
        if writes[-1] not in ("manifest.json", PUBLISH_MARKER):
            assert not storage.is_file(f"{dest}/manifest.json")
            assert storage.is_file(f"{dest}/{PUBLISH_MARKER}")
        original(uri, data)

    storage.write_bytes = recording_write
    older: list[str] = []
    for version, names in (("1", ["shard-0.jsonl", "stale.jsonl"]), ("2", ["shard-0.jsonl"])):
        staging = tmp_path / f"staging{version}"
        staging.mkdir()
        for name in names + ["manifest.json"]:
            (staging / name).write_text(version)
        storage.publish_folder(staging, dest, last="manifest.json", replaces=older)
        older = names + ["manifest.json"]
    assert writes == [PUBLISH_MARKER, "shard-0.jsonl", "stale.jsonl", "manifest.json",
                      PUBLISH_MARKER, "shard-0.jsonl", "manifest.json"]
    assert storage.list_files(dest) == ["manifest.json", "shard-0.jsonl"]
    assert storage.read_text(f"{dest}/shard-0.jsonl") == "2"


def test_wrong_credentials_fail_with_the_uri_and_without_the_secret(s3_endpoint, prefix, monkeypatch):
    """moto accepts any key, so point at a closed port instead: the error names the URI, not the secret."""
    from rsvlm.dev.services import free_port

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "super-secret-value")
    storage = Storage(StorageConfig(endpoint_url=f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(OSError) as caught:
        storage.read_bytes(f"{prefix}/x")
    assert "super-secret-value" not in str(caught.value)


def test_a_pickled_storage_reads_s3_inside_ray_workers(storage, prefix, local_ray):
    storage.write_text(f"{prefix}/worker.txt", "from the driver")

    @local_ray.remote
    def read(shipped: Storage, uri: str) -> str:
        return shipped.read_text(uri)

    assert local_ray.get(read.remote(storage, f"{prefix}/worker.txt")) == "from the driver"
