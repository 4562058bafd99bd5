"""finetune checks a prepared dataset before Ray starts: the manifest against the shards (sizes, hashes,
fingerprint), a missing dataset, and a bad line named by shard and line when only training can see it."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from rsvlm.config import compose
from rsvlm.config.data import DataVerify
from rsvlm.data.prepare import MANIFEST, SHARD_FILES, prepare_dataset, prepared_manifest, read_manifest, \
    verified_manifest, verify_prepared
from rsvlm.data.samples import parse_lines
from rsvlm.errors import JobError

SMALL = ["data.synthetic.num_train_images=4", "data.synthetic.num_test_images=1", "tracking=off", "scaling=local"]


@pytest.fixture
def job(tmp_path):
    job = compose([f"workdir={tmp_path}", *SMALL])
    prepare_dataset(job.data)
    return job


def shard_path(job, index: int = 0):
    from pathlib import Path

    return Path(job.data.uri) / read_manifest(job.data.uri)["shards"][index]


def edit_manifest(job, change) -> None:
    from pathlib import Path

    path = Path(job.data.uri) / MANIFEST
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def corrupt_line_same_size(path, index: int) -> str:
    """Replace line ``index`` (0-based) of ``path`` by garbage of the same length; returns the garbage."""
    lines = path.read_text(encoding="utf-8").split("\n")
    garbage = "#" * len(lines[index].encode("utf-8"))
    lines[index] = garbage
    path.write_text("\n".join(lines), encoding="utf-8")
    return garbage


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if finetune gets as far as starting Ray (or loading the model)."""
    from rsvlm.train import finetune

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started: the dataset check must come first")

    monkeypatch.setattr(finetune, "ensure_ray", refuse)
    monkeypatch.setattr(finetune, "load_processor", refuse)


# ----------------------------------------------------------------------------------------- the manifest


def test_the_manifest_records_each_shards_size_hash_and_records(job):
    manifest = read_manifest(job.data.uri)
    [entry] = manifest[SHARD_FILES]
    data = shard_path(job).read_bytes()
    assert entry["name"] == manifest["shards"][0] and entry["bytes"] == len(data)
    assert entry["records"] == manifest["records"] == data.count(b"\n")
    import hashlib

    assert entry["sha256"] == hashlib.sha256(data).hexdigest() == manifest["fingerprint"]  # one shard
    checked = verify_prepared(job.data.uri, manifest)
    assert "size" in checked.checked and "fingerprint" in checked.checked and checked.bytes == len(data)


def test_a_wrong_fingerprint_is_refused_before_ray_starts(job, no_ray):
    from rsvlm.train.finetune import run_finetune

    edit_manifest(job, lambda m: m.update(fingerprint="0" * 64))
    with pytest.raises(JobError) as caught:
        run_finetune(job)
    message = str(caught.value)
    assert message.startswith(f"prepared dataset {job.data.uri}: ") and "fingerprint" in message
    assert "run jobs/prepare_data.py again" in message and "\n" not in message


def test_a_truncated_shard_is_refused_in_seconds_naming_the_shard(job, no_ray):
    from rsvlm.train.finetune import run_finetune

    path = shard_path(job)
    size = path.stat().st_size
    with path.open("r+b") as handle:
        handle.truncate(size // 2)
    started = time.perf_counter()
    with pytest.raises(JobError, match=rf"shard {path.name} is {size // 2} bytes but manifest.json records {size}"):
        run_finetune(job)
    assert time.perf_counter() - started < 5


def test_a_missing_shard_is_named(job):
    shard_path(job).unlink()
    with pytest.raises(JobError, match=r"shard shard-00000.jsonl is missing"):
        verify_prepared(job.data.uri, read_manifest(job.data.uri))


def test_a_same_size_change_is_found_by_hashing_but_not_by_sizes(job):
    corrupt_line_same_size(shard_path(job), 3)
    manifest = read_manifest(job.data.uri)
    assert "not the fingerprint: data.verify=sizes" in verify_prepared(job.data.uri, manifest,
                                                                       mode=DataVerify.sizes).checked
    with pytest.raises(JobError, match=r"shard shard-00000.jsonl has sha256 .*same size: its content was changed"):
        verify_prepared(job.data.uri, manifest, mode=DataVerify.full)
    with pytest.raises(JobError, match="sha256"):  # auto: a small dataset is hashed
        verify_prepared(job.data.uri, manifest, mode=DataVerify.auto)
    # auto above the size limit checks only the sizes, and says so
    assert "verify_full_max_mb=0" in verify_prepared(job.data.uri, manifest, mode=DataVerify.auto,
                                                     full_max_mb=0).checked


def test_an_older_manifest_without_sizes_is_checked_as_far_as_it_can_be(job):
    edit_manifest(job, lambda m: m.pop(SHARD_FILES))
    manifest = read_manifest(job.data.uri)
    assert "records no sizes" in verify_prepared(job.data.uri, manifest, mode=DataVerify.sizes).checked
    with shard_path(job).open("r+b") as handle:
        handle.truncate(100)
    verify_prepared(job.data.uri, manifest, mode=DataVerify.sizes)  # nothing to compare the size with
    with pytest.raises(JobError, match=r"fingerprint \(sha256 over all shards in order\) is .*a shard was changed"):
        verify_prepared(job.data.uri, manifest, mode=DataVerify.auto)


def test_verify_is_a_config_choice(tmp_path):
    assert compose([f"workdir={tmp_path}"]).data.verify is DataVerify.auto
    assert compose([f"workdir={tmp_path}", "data.verify=sizes"]).data.verify is DataVerify.sizes
    with pytest.raises(JobError, match="data.verify"):
        compose([f"workdir={tmp_path}", "data.verify=most"])


# --------------------------------------------------------------------------------- no prepared dataset


def test_synthetic_data_is_prepared_when_missing(tmp_path, capsys):
    job = compose([f"workdir={tmp_path}", *SMALL])
    manifest = verified_manifest(job.data)
    assert manifest["records"] > 0 and (tmp_path / "data" / "prepared" / MANIFEST).is_file()
    assert "checked every shard's size and the sha256 fingerprint" in capsys.readouterr().err


def test_other_data_that_is_not_prepared_names_the_command_that_prepares_it(tmp_path):
    job = compose([f"workdir={tmp_path}", "data=custom", f"data.source={tmp_path}/rs.json",
                   f"data.image_root={tmp_path}/img"])
    with pytest.raises(JobError) as caught:
        prepared_manifest(job.data)
    assert str(caught.value) == (
        f"data.uri={tmp_path}/data/prepared: no prepared dataset there (no manifest.json) (make it first: "
        f"python jobs/prepare_data.py source={tmp_path}/rs.json image_root={tmp_path}/img "
        f"output={tmp_path}/data/prepared)")


# --------------------------------------------------------------------------------- a bad line in a shard


def test_a_bad_line_is_named_by_shard_and_line(job):
    path = shard_path(job)
    garbage = corrupt_line_same_size(path, 5)
    lines = path.read_text().split("\n")[:8]
    batch = {"text": np.array(lines[3:8], dtype=object), "path": np.array([str(path).lstrip("/")] * 5, dtype=object)}
    with pytest.raises(JobError) as caught:
        parse_lines(batch, shard_uris={str(path).lstrip("/"): str(path)})
    assert str(caught.value).startswith(f"{path}:6: invalid JSON (Expecting value; column 1): '{garbage[:20]}")
    assert "run jobs/prepare_data.py again" in str(caught.value)
    not_a_record = {"text": np.array(['{"id": "x"}'], dtype=object)}
    with pytest.raises(JobError, match=r"a prepared record: not a prepared record \(no 'conversations'\)"):
        parse_lines(not_a_record)
    assert parse_lines({"text": np.array(lines[:2], dtype=object)})[1]["id"]


def test_a_line_that_ray_data_splits_at_a_line_separator_is_told_apart(tmp_path):
    """U+2028 is valid unescaped inside a JSON string, but Ray Data's read_text (str.splitlines) splits there:
    the shard is intact, and the error says which character, not that the shard was changed."""
    shard = tmp_path / "shard-00000.jsonl"
    shard.write_text('{"id": "a", "conversations": []}\n{"id": "b", "conversations": [{"value": "x\u2028y"}]}\n',
                     encoding="utf-8")
    pieces = shard.read_text(encoding="utf-8").splitlines()  # what read_text hands to the map step
    assert len(pieces) == 3
    batch = {"text": np.array(pieces, dtype=object), "path": np.array([str(shard)] * 3, dtype=object)}
    with pytest.raises(JobError, match=rf"^{shard}:2: the record holds a line-separator character \(U\+2028"):
        parse_lines(batch)
