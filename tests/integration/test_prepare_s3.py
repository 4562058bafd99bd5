"""prepare_data with the instruction file, the images and the output on S3 (moto's server on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from rsvlm.config.schema import DataConfig, OnError, StorageConfig
from rsvlm.data.prepare import MANIFEST, REJECTS, PrepareError, prepare_dataset, read_prepared_records
from rsvlm.data.storage import Storage
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
