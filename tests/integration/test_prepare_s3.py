"""prepare_data with the instruction file, the images and the output on S3 (moto's server on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid

import pytest

from rsvlm.config.data import DataConfig, OnError
from rsvlm.config.storage import StorageConfig
from rsvlm.data.prepare import MANIFEST, REJECTS, PrepareError, prepare_dataset, read_prepared_records
from rsvlm.data.storage import Storage
from rsvlm.errors import JobError
from support import DEFECTS, GOOD_IMAGES, LOCAL_ONLY_DEFECTS, TEST_BUCKET, conversation, upload_tree, write_image_tree

S3_DEFECTS = [(record, reason) for record, reason in DEFECTS if record.get("id") not in LOCAL_ONLY_DEFECTS]


@pytest.fixture(scope="module")
def bucket(s3_endpoint, tmp_path_factory):
    """``(storage, prefix)`` with the test images uploaded once under ``prefix/img``."""
    storage = Storage(StorageConfig(endpoint_url=s3_endpoint))
    prefix = f"s3://{TEST_BUCKET}/prepare-{uuid.uuid4().hex}"
    upload_tree(storage, write_image_tree(tmp_path_factory.mktemp("images")), f"{prefix}/img")
    return storage, prefix


def put_jsonl(storage, uri, records):
    storage.write_text(uri, "".join(json.dumps(r) + "\n" for r in records))
    return uri


def config(prefix, source, on_error=OnError.fail):
    return DataConfig(name="s3test", source=source, image_root=f"{prefix}/img", uri=f"{source}.prepared",
                      on_error=on_error)


@pytest.mark.parametrize("record,reason", S3_DEFECTS, ids=[r.get("id", "no-id") for r, _ in S3_DEFECTS])
def test_each_defect_from_s3_is_named_and_fail_writes_nothing(bucket, record, reason):
    storage, prefix = bucket
    source = put_jsonl(storage, f"{prefix}/{uuid.uuid4().hex}.jsonl", [conversation("a1"), record])
    with pytest.raises(PrepareError) as caught:
        prepare_dataset(config(prefix, source), storage)
    problem = caught.value.problems[0]
    assert reason in problem.reason and problem.where == "2"
    assert str(problem).startswith(f"{source}:2: id=")
    assert storage.list_files(f"{source}.prepared") == []


def test_skip_from_s3_writes_good_records_rejects_and_manifest(bucket):
    storage, prefix = bucket
    kept_ids = ["a1"] + [f"good-{image}" for image in GOOD_IMAGES]
    records = [conversation("a1")] + [conversation(i, image) for i, image in zip(kept_ids[1:], GOOD_IMAGES)]
    records += [record for record, _ in S3_DEFECTS]
    source = put_jsonl(storage, f"{prefix}/skip.jsonl", records)
    prepared = prepare_dataset(config(prefix, source, OnError.skip), storage)
    assert storage.list_files(prepared.uri) == sorted([MANIFEST, REJECTS, *prepared.manifest["shards"]])
    manifest = json.loads(storage.read_text(f"{prepared.uri}/{MANIFEST}"))
    assert manifest["records"] == len(kept_ids) and manifest["rejected"] == len(S3_DEFECTS)
    rejects = [json.loads(line) for line in storage.read_text(f"{prepared.uri}/{REJECTS}").splitlines()]
    assert [r["id"] for r in rejects] == [r.get("id") for r, _ in S3_DEFECTS]
    assert [r["id"] for r in read_prepared_records(prepared.uri, storage)] == kept_ids


def run_job(*args, endpoint):
    env = {**os.environ, "PYTHONPATH": "platform"}
    return subprocess.run([sys.executable, "jobs/prepare_data.py", *args, f"storage.endpoint_url={endpoint}"],
                          capture_output=True, text=True, env=env, timeout=300)


def test_prepare_job_shorthands_fail_lists_problems_and_skip_exits_zero(bucket, s3_endpoint, tmp_path):
    storage, prefix = bucket
    source = put_jsonl(storage, f"{prefix}/job.jsonl",
                       [conversation("a1"), {**conversation("x1"), "image": "missing.png"},
                        {**conversation("x2"), "image": "../outside.png"}])
    output = f"{prefix}/job-prepared"
    common = [f"workdir={tmp_path}", f"source={source}", f"image_root={prefix}/img", f"output={output}"]
    failed = run_job(*common, endpoint=s3_endpoint)
    assert failed.returncode == 1, failed.stderr
    assert f"{source}:2: id=x1: image not found: missing.png" in failed.stderr
    assert f"{source}:3: id=x2: image path '../outside.png' escapes the image root" in failed.stderr
    assert storage.list_files(output) == []
    skipped = run_job(*common, "on_error=skip", "format=llava", endpoint=s3_endpoint)
    assert skipped.returncode == 0, skipped.stderr
    assert "prepared 1 records (2 rejected, 1 images)" in skipped.stdout
    assert json.loads(storage.read_text(f"{output}/{MANIFEST}"))["by_source"] == {"job": 1}
    assert "rsvlm-test-secret" not in skipped.stdout + skipped.stderr


def test_json_syntax_errors_from_s3_name_line_and_column(bucket):
    storage, prefix = bucket
    jsonl = f"{prefix}/syntax.jsonl"
    storage.write_text(jsonl, json.dumps(conversation("a1")) + '\n{"id": "b", oops}\n')
    with pytest.raises(PrepareError, match=r"syntax.jsonl:2:\d+: id=\?: invalid JSON"):
        prepare_dataset(config(prefix, jsonl), storage)
    listing = f"{prefix}/syntax.json"
    storage.write_text(listing, '[\n  {"id": "a1",\n   "image": "a.png" oops}\n]')
    with pytest.raises(PrepareError, match=r"syntax.json:3:\d+: id=\?: invalid JSON"):
        prepare_dataset(config(prefix, listing), storage)
    assert storage.list_files(f"{jsonl}.prepared") == [] and storage.list_files(f"{listing}.prepared") == []


# -- the output prefix: only an earlier prepared dataset is replaced -------------------------------------------

def test_a_prefix_with_other_objects_is_refused_and_left_untouched(bucket, s3_endpoint, tmp_path):
    storage, prefix = bucket
    source = put_jsonl(storage, f"{prefix}/{uuid.uuid4().hex}.jsonl", [conversation("a1")])
    output = f"{source}.prepared"
    storage.write_text(f"{output}/notes.txt", "my notes")
    storage.write_text(f"{output}/models/m.bin", "weights")
    with pytest.raises(JobError) as caught:
        prepare_dataset(config(prefix, source), storage)
    assert str(caught.value).startswith(f"{output}: exists and holds 2 file(s) this job did not write "
                                        "(models/m.bin, notes.txt); nothing was changed (")
    assert storage.list_files(output) == ["models/m.bin", "notes.txt"]
    assert storage.read_text(f"{output}/notes.txt") == "my notes"
    job = run_job(f"workdir={tmp_path}", f"source={source}", f"image_root={prefix}/img", f"output={output}",
                  endpoint=s3_endpoint)
    lines = [line for line in job.stderr.splitlines() if line.strip()]
    assert job.returncode == 1 and lines[-1].startswith(f"error: {output}: exists and holds 2 file(s)"), job.stderr
    assert storage.list_files(output) == ["models/m.bin", "notes.txt"]


def test_an_earlier_dataset_on_s3_is_replaced_but_not_with_a_foreign_object_in_it(bucket):
    storage, prefix = bucket
    source = put_jsonl(storage, f"{prefix}/{uuid.uuid4().hex}.jsonl", [conversation("a1"), conversation("a2")])
    cfg = config(prefix, source)
    cfg.records_per_shard = 1
    assert prepare_dataset(cfg, storage).manifest["shards"] == ["shard-00000.jsonl", "shard-00001.jsonl"]
    put_jsonl(storage, source, [conversation("a1")])
    prepare_dataset(cfg, storage)
    assert storage.list_files(cfg.uri) == [MANIFEST, REJECTS, "shard-00000.jsonl"]
    storage.write_text(f"{cfg.uri}/extra.json", "{}")
    with pytest.raises(JobError, match=r"holds 1 file\(s\) this job did not write \(extra.json\)"):
        prepare_dataset(cfg, storage)
    assert storage.list_files(cfg.uri) == sorted([MANIFEST, "extra.json", REJECTS, "shard-00000.jsonl"])


def test_an_image_root_prefix_without_objects_or_a_missing_bucket_is_one_error(bucket):
    storage, prefix = bucket
    source = put_jsonl(storage, f"{prefix}/{uuid.uuid4().hex}.jsonl", [conversation("a1"), conversation("a2")])
    for image_root in (f"{prefix}/no-images-here", "s3://rsvlm-no-such-bucket/img"):
        cfg = config(prefix, source, OnError.skip)
        cfg.image_root = image_root
        with pytest.raises(JobError, match=f"^{image_root}: the image root does not exist"):
            prepare_dataset(cfg, storage)
    assert storage.list_files(f"{source}.prepared") == []
    cfg = config(prefix, source)
    cfg.uri = "s3://rsvlm-no-such-bucket/prepared"
    with pytest.raises(JobError, match="^s3://rsvlm-no-such-bucket/prepared: no such bucket"):
        prepare_dataset(cfg, storage)


# prepare_data killed (SIGKILL) half-way through uploading a new version over an older one.
KILLED_MID_UPLOAD = """
import os, signal, sys
from rsvlm.config.data import DataConfig
from rsvlm.config.storage import StorageConfig
from rsvlm.data.prepare import prepare_dataset
from rsvlm.data.storage import Storage

storage = Storage(StorageConfig(endpoint_url=sys.argv[1]))
original, uploads = storage.write_bytes, []

def write_then_die(uri, data):
    original(uri, data)
    uploads.append(uri)
    if uri.endswith("shard-00000.jsonl"):
        os.kill(os.getpid(), signal.SIGKILL)

storage.write_bytes = write_then_die
prepare_dataset(DataConfig(name="s3test", source=sys.argv[2], image_root=sys.argv[3], uri=sys.argv[4],
                           records_per_shard=1), storage)
"""


def test_a_publish_killed_half_way_is_finished_by_the_next_run(bucket, s3_endpoint, tmp_path, monkeypatch):
    import tempfile
    import time

    from rsvlm.data.storage import PUBLISH_MARKER, STAGING_GRACE_S

    storage, prefix = bucket
    source = put_jsonl(storage, f"{prefix}/{uuid.uuid4().hex}.jsonl", [conversation("a1"), conversation("a2")])
    cfg = config(prefix, source)
    cfg.records_per_shard = 1
    prepare_dataset(cfg, storage)
    put_jsonl(storage, source, [conversation("a1"), conversation("a2"), conversation("a3")])
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_UPLOAD, s3_endpoint, source, cfg.image_root, cfg.uri],
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "TMPDIR": str(tmp)},
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # The older manifest is gone (no reader takes the mix for a dataset); the marker says what is in play.
    assert storage.list_files(cfg.uri) == [PUBLISH_MARKER, REJECTS, "shard-00000.jsonl", "shard-00001.jsonl"]
    leftovers = sorted(p.name for p in tmp.iterdir())
    assert len(leftovers) == 2 and all(name.startswith("rsvlm-staging-") for name in leftovers)
    then = time.time() - STAGING_GRACE_S - 120  # the kill was a few minutes ago
    for name in leftovers:
        os.utime(tmp / name, (then, then))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    again = prepare_dataset(cfg, storage)
    assert again.manifest["records"] == 3
    assert storage.list_files(cfg.uri) == [MANIFEST, REJECTS, "shard-00000.jsonl", "shard-00001.jsonl",
                                           "shard-00002.jsonl"]
    assert [r["id"] for r in read_prepared_records(cfg.uri, storage)] == ["a1", "a2", "a3"]
    assert list(tmp.iterdir()) == []
