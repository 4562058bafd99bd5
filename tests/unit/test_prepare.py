"""prepare_data: every bad record is named (file, line or item, id, reason); fail writes nothing."""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rsvlm.config.data import DataConfig, OnError
from rsvlm.data.prepare import MANIFEST, MANIFEST_FORMAT, REJECTS, PrepareError, prepare_dataset
from rsvlm.data.storage import STALE_AFTER_S, STAGING_GRACE_S
from rsvlm.errors import JobError
from support import DEFECTS, GOOD_IMAGES, conversation, write_image_tree


@pytest.fixture
def root(tmp_path):
    write_image_tree(tmp_path)
    return tmp_path


def config(root, source, on_error=OnError.fail):
    return DataConfig(name="test", source=str(source), image_root=str(root / "img"),
                      uri=str(root / "prepared"), on_error=on_error)


def write_jsonl(path, records, extra_lines=()):
    lines = [json.dumps(r) for r in records] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("record,reason", DEFECTS, ids=[r.get("id", "no-id") for r, _ in DEFECTS])
def test_each_defect_is_named_and_fail_writes_nothing(root, record, reason):
    source = write_jsonl(root / "data.jsonl", [conversation("a1"), record])
    with pytest.raises(PrepareError) as caught:
        prepare_dataset(config(root, source))
    problem = caught.value.problems[0]
    assert reason in problem.reason
    assert problem.file == str(source) and problem.where == "2"
    assert str(problem).startswith(f"{source}:2: id=")
    assert not (root / "prepared").exists()


def test_malformed_json_line_names_line_and_column(root):
    source = write_jsonl(root / "data.jsonl", [conversation("a1")], extra_lines=['{"id": "b", oops}'])
    with pytest.raises(PrepareError, match=r"data.jsonl:2:\d+: id=\?: invalid JSON"):
        prepare_dataset(config(root, source))


def test_malformed_json_list_names_line_and_column(root):
    source = root / "data.json"
    source.write_text('[\n  {"id": "a1",\n   "image": "a.png" oops}\n]')
    with pytest.raises(PrepareError, match=r"data.json:3:\d+: id=\?: invalid JSON"):
        prepare_dataset(config(root, source))


def test_skip_writes_good_records_rejects_and_manifest(root):
    kept_ids = ["a1"] + [f"good-{image}" for image in GOOD_IMAGES]
    records = [conversation("a1")] + [conversation(i, image) for i, image in zip(kept_ids[1:], GOOD_IMAGES)]
    records += [r for r, _ in DEFECTS]
    source = write_jsonl(root / "data.jsonl", records)
    prepared = prepare_dataset(config(root, source, OnError.skip))
    manifest = json.loads((root / "prepared" / MANIFEST).read_text())
    assert manifest == prepared.manifest
    assert manifest["records"] == len(kept_ids) and manifest["rejected"] == len(DEFECTS)
    assert manifest["by_source"] == {"test": len(kept_ids)} and manifest["images"] == len(GOOD_IMAGES)
    assert len(manifest["fingerprint"]) == 64
    rejects = [json.loads(line) for line in (root / "prepared" / REJECTS).read_text().splitlines()]
    assert [r["id"] for r in rejects] == [r.get("id") for r, _ in DEFECTS]
    assert [int(r["where"]) for r in rejects] == list(range(len(kept_ids) + 1, len(records) + 1))
    assert all(r["file"] == str(source) and r["reason"] for r in rejects)
    kept = [json.loads(line) for line in (root / "prepared" / manifest["shards"][0]).read_text().splitlines()]
    assert [r["id"] for r in kept] == kept_ids
    assert kept[0]["source"] == "test" and kept[0]["conversations"][1]["value"] == "yes"
    assert not [p for p in root.iterdir() if p.name.startswith(".prepared")]  # no staging folder left


def test_preparing_again_replaces_the_dataset_and_keeps_its_fingerprint(root):
    source = write_jsonl(root / "data.jsonl", [conversation("a1"), conversation("a2", "rgba.png")])
    first = prepare_dataset(config(root, source)).manifest
    assert prepare_dataset(config(root, source)).manifest["fingerprint"] == first["fingerprint"]
    write_jsonl(source, [conversation("a1")])
    again = prepare_dataset(config(root, source)).manifest
    assert again["records"] == 1 and again["fingerprint"] != first["fingerprint"]
    assert sorted(p.name for p in root.iterdir() if "prepared" in p.name) == ["prepared"]


def age(path, seconds):
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_dataset_name_defaults_to_the_source_file_name(root):
    source = write_jsonl(root / "rs_gpt4v.jsonl", [conversation("a1"), {**conversation("a2"), "source": "own"}])
    cfg = config(root, source)
    cfg.name = None
    prepared = prepare_dataset(cfg)
    assert prepared.manifest["by_source"] == {"own": 1, "rs_gpt4v": 1}


def test_llava_json_list_is_read(root):
    source = root / "data.json"
    source.write_text(json.dumps([conversation("a1"), conversation("a2", answer="no")]))
    prepared = prepare_dataset(config(root, source))
    assert prepared.manifest["records"] == 2 and prepared.manifest["images"] == 1


# -- the output: only an earlier prepared dataset is replaced -------------------------------------------------

def custom(compose_job, source, image_root, output, *extra):
    """``data`` of a job composed as a user would (``data=custom`` with its keys)."""
    return compose_job("data=custom", f"data.source={source}", f"data.image_root={image_root}",
                       f"data.uri={output}", "data.name=test", *extra).data


def beside(folder):
    """What sits beside ``folder`` under its name: staging or retired copies, if any were left."""
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


def test_an_output_folder_with_other_files_is_refused_and_left_untouched(root, compose_job):
    source = write_jsonl(root / "data.jsonl", [conversation("a1")])
    output = root / "results"
    (output / "sub").mkdir(parents=True)
    (output / "notes.txt").write_text("my notes")
    (output / "sub" / "model.bin").write_bytes(b"\x00weights")
    with pytest.raises(JobError) as caught:
        prepare_dataset(custom(compose_job, source, root / "img", output))
    assert str(caught.value).startswith(f"{output}: exists and holds 2 file(s) this job did not write "
                                        "(notes.txt, sub/model.bin); nothing was changed (")
    assert (output / "notes.txt").read_text() == "my notes"
    assert (output / "sub" / "model.bin").read_bytes() == b"\x00weights"
    assert sorted(p.name for p in output.iterdir()) == ["notes.txt", "sub"] and beside(output) == []


def test_an_output_that_is_a_file_is_refused_and_kept(root, compose_job):
    source = write_jsonl(root / "data.jsonl", [conversation("a1")])
    output = root / "prepared.json"
    output.write_text("the user's file")
    with pytest.raises(JobError, match=f"^{output}: is a file, not a folder"):
        prepare_dataset(custom(compose_job, source, root / "img", output))
    assert output.read_text() == "the user's file" and beside(output) == []


def test_a_folder_with_a_foreign_manifest_is_refused(root, compose_job):
    source = write_jsonl(root / "data.jsonl", [conversation("a1")])
    output = root / "webapp"
    output.mkdir()
    (output / MANIFEST).write_text('{"name": "my web app", "icons": []}')
    with pytest.raises(JobError, match=f"^{output}: holds a manifest.json that prepare_data did not write"):
        prepare_dataset(custom(compose_job, source, root / "img", output))
    assert json.loads((output / MANIFEST).read_text())["name"] == "my web app"


def test_an_earlier_dataset_is_replaced_but_not_when_someone_added_a_file_to_it(root, compose_job):
    source = write_jsonl(root / "data.jsonl", [conversation("a1"), conversation("a2")])
    output = root / "prepared"
    cfg = custom(compose_job, source, root / "img", output, "data.records_per_shard=1")
    first = prepare_dataset(cfg).manifest
    assert first["format"] == MANIFEST_FORMAT and first["shards"] == ["shard-00000.jsonl", "shard-00001.jsonl"]
    # A dataset written before the manifest had a "format" is recognised by its shards and fingerprint.
    older = {key: value for key, value in first.items() if key != "format"}
    (output / MANIFEST).write_text(json.dumps(older))
    write_jsonl(source, [conversation("a1")])
    again = prepare_dataset(cfg).manifest
    assert again["records"] == 1 and sorted(p.name for p in output.iterdir()) == [MANIFEST, REJECTS,
                                                                                 "shard-00000.jsonl"]
    (output / "my-analysis.ipynb").write_text("{}")
    with pytest.raises(JobError, match=r"holds 1 file\(s\) this job did not write \(my-analysis.ipynb\)"):
        prepare_dataset(cfg)
    assert (output / "my-analysis.ipynb").exists() and beside(output) == []


# -- nothing to publish -------------------------------------------------------------------------------------

def test_a_missing_image_root_is_one_error_even_with_skip(root, compose_job):
    source = write_jsonl(root / "data.jsonl", [conversation(f"a{i}") for i in range(60)])
    for image_root, why in ((root / "no-such-folder", "the image root does not exist"),
                            (root / "img" / "a.png", "the image root is not a folder")):
        with pytest.raises(JobError) as caught:
            prepare_dataset(custom(compose_job, source, image_root, root / "prepared", "data.on_error=skip"))
        assert str(caught.value).startswith(f"{image_root}: {why} (set image_root=")
    assert not (root / "prepared").exists() and beside(root / "prepared") == []


def test_an_empty_list_publishes_nothing(root, compose_job):
    source = root / "data.json"
    source.write_text("[]")
    with pytest.raises(JobError, match=f"^{source}: holds no records"):
        prepare_dataset(custom(compose_job, source, root / "img", root / "prepared", "data.format=llava"))
    assert not (root / "prepared").exists()


def test_when_skip_rejects_every_record_nothing_is_published(root, compose_job):
    source = write_jsonl(root / "data.jsonl", [{**conversation("x1"), "image": "missing.png"},
                                               {**conversation("x2"), "image": "empty.png"}])
    with pytest.raises(PrepareError) as caught:
        prepare_dataset(custom(compose_job, source, root / "img", root / "prepared", "data.on_error=skip"))
    assert str(caught.value).startswith(f"{source}: all 2 record(s) were rejected")
    assert "\n" not in str(caught.value)
    assert caught.value.listing().splitlines() == [f"{source}:1: id=x1: image not found: missing.png",
                                                   f"{source}:2: id=x2: image is empty: empty.png"]
    assert not (root / "prepared").exists()


def test_prepare_error_is_one_line_and_lists_every_problem(root):
    source = write_jsonl(root / "data.jsonl", [conversation("a1")] + [
        {**conversation(f"x{i}"), "image": "missing.png"} for i in range(60)])
    with pytest.raises(PrepareError) as caught:
        prepare_dataset(config(root, source))
    error = caught.value
    assert isinstance(error, JobError) and "\n" not in str(error)
    assert str(error).startswith(f"{source}: 60 bad record(s); nothing was written; the first: "
                                 f"{source}:2: id=x0: image not found: missing.png (")
    listed = error.listing().splitlines()
    assert len(listed) == 51 and listed[0] == f"{source}:2: id=x0: image not found: missing.png"
    assert listed[-1] == "… and 10 more"
    restored = pickle.loads(pickle.dumps(error))
    assert str(restored) == str(error) and len(restored.problems) == 60


# -- unreadable sources -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,content,fmt,why", [
    ("missing.json", None, "auto", "no such file"),
    ("empty.json", "", "auto", "the file is empty"),
    ("blank.jsonl", "\ufeff\n  \n", "llava", "the file is empty"),
    ("object.json", json.dumps({"data": [conversation("a1")]}, indent=2), "llava",
     "is one JSON object, not a list of records"),
    ("object1.json", json.dumps({"version": 2, "data": [conversation("a1")]}), "auto",
     "is one JSON object, not a list of records"),
    ("folder.json", "FOLDER", "auto", "is a folder, not a file"),
    ("binary.json", b"\xff\xfe[]", "auto", "not UTF-8 text"),
    ("unknown.jsonl", '{"text": "hello"}\n', "auto", "cannot detect the instruction format"),
])
def test_an_unusable_source_is_one_error_naming_it(root, compose_job, name, content, fmt, why):
    source = root / name
    if content == "FOLDER":
        source.mkdir()
    elif isinstance(content, bytes):
        source.write_bytes(content)
    elif content is not None:
        source.write_text(content)
    with pytest.raises(JobError) as caught:
        prepare_dataset(custom(compose_job, source, root / "img", root / "prepared", f"data.format={fmt}"))
    assert str(caught.value).startswith(f"{source}: {why}") and "\n" not in str(caught.value)
    assert not (root / "prepared").exists()


def test_a_json_object_with_a_records_list_says_which_key(root, compose_job):
    source = root / "wrapped.json"
    source.write_text(json.dumps({"info": {"v": 1}, "annotations": [conversation("a1")]}))
    with pytest.raises(JobError, match="its 'annotations' list looks like the records"):
        prepare_dataset(custom(compose_job, source, root / "img", root / "prepared"))


def test_a_one_record_jsonl_file_is_still_read(root, compose_job):
    source = write_jsonl(root / "one.jsonl", [conversation("a1")])
    assert prepare_dataset(custom(compose_job, source, root / "img", root / "prepared")).manifest["records"] == 1


# -- leftovers of killed runs ---------------------------------------------------------------------------------

# prepare_data killed (SIGKILL) in the middle of publishing: the older version is moved aside, the new one not
# yet renamed into place.
KILLED_MID_PUBLISH = """
import os, signal, sys
import rsvlm.data.storage as storage
from rsvlm.config import compose

def swap_and_die(staged, dest):
    if dest.exists():
        os.replace(dest, staged.with_name(staged.name + ".retired"))
    os.kill(os.getpid(), signal.SIGKILL)

storage._swap_into_place = swap_and_die
from rsvlm.data.prepare import prepare_dataset
prepare_dataset(compose(sys.argv[1:]).data)
"""


def test_a_run_killed_while_publishing_leaves_nothing_after_the_next_run(root, compose_job, tmp_path):
    source = write_jsonl(root / "data.jsonl", [conversation("a1"), conversation("a2", "rgba.png")])
    output = root / "prepared"
    overrides = [f"workdir={tmp_path}", "data=custom", f"data.source={source}", f"data.image_root={root / 'img'}",
                 f"data.uri={output}", "data.name=test"]
    first = prepare_dataset(compose_job(*overrides[1:]).data).manifest
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_PUBLISH, *overrides], env=env, timeout=120,
                            capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # Left: the staging folder (the new version), its lock, and the older version moved aside; no output.
    leftovers = beside(output)
    token = leftovers[0]
    assert token.startswith(".prepared.rsvlm-staging-") and leftovers == [token, f"{token}.lock", f"{token}.retired"]
    assert not output.exists()
    for name in leftovers:  # killed a few minutes ago
        age(root / name, STAGING_GRACE_S + 120)
    # Another job's staging folder, alive: its lock is held (here by this process).
    live = root / ".prepared.rsvlm-staging-999999-0123abcd"
    live.mkdir()
    (live / "shard-00000.jsonl").write_text("being written")
    held = os.open(f"{live}.lock", os.O_CREAT | os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    age(Path(f"{live}.lock"), STAGING_GRACE_S + 120)
    (root / ".prepared.keep").write_text("someone else's")
    try:
        again = prepare_dataset(compose_job(*overrides[1:]).data).manifest
    finally:
        os.close(held)
    assert again["fingerprint"] == first["fingerprint"]
    assert beside(output) == sorted([".prepared.keep", live.name, f"{live.name}.lock"])
    assert (live / "shard-00000.jsonl").read_text() == "being written"
    assert sorted(p.name for p in output.iterdir()) == [MANIFEST, REJECTS, "shard-00000.jsonl"]


def test_stale_leftovers_of_older_versions_are_swept(root, compose_job, tmp_path, monkeypatch):
    """Before the staging tag, a kill left ``.<name>.<hex>.partial`` beside the output and
    ``rsvlm-prepare-*`` in the temporary folder: swept once old, young ones (maybe alive) kept."""
    import tempfile

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    source = write_jsonl(root / "data.jsonl", [conversation("a1")])
    output = root / "prepared"
    stale = root / f".prepared.{'c' * 32}.partial"
    old_tmp, young_tmp = tmp / "rsvlm-prepare-k2j4", tmp / "rsvlm-prepare-x"
    for folder in (stale, old_tmp, young_tmp):
        folder.mkdir()
        (folder / "shard-00000.jsonl").write_text("{}")
    (tmp / "unrelated").mkdir()
    for folder in (stale, old_tmp, tmp / "unrelated"):
        age(folder, STALE_AFTER_S + 60)
    prepare_dataset(custom(compose_job, source, root / "img", output))
    assert not stale.exists() and beside(output) == []
    assert sorted(p.name for p in tmp.iterdir()) == ["rsvlm-prepare-x", "unrelated"]


# -- as a user runs it ----------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


def test_the_job_prints_one_error_line_naming_the_path(root, tmp_path):
    from rsvlm.dev.services import free_port

    source = write_jsonl(root / "data.jsonl", [conversation("a1"), {**conversation("x1"), "image": "missing.png"}])
    foreign = root / "results"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    endpoint = f"http://127.0.0.1:{free_port()}"
    cases = [
        ([f"output={foreign}"], f"error: {foreign}: exists and holds 1 file(s) this job did not write"),
        (["image_root=/nonexistent/images", "on_error=skip"], "error: /nonexistent/images: the image root does not"),
        ([f"source={root / 'nope.json'}"], f"error: {root / 'nope.json'}: no such file"),
        (["output=s3://rsvlm-test/prepared", f"storage.endpoint_url={endpoint}"],
         f"error: {endpoint}: cannot connect to the S3 endpoint (check storage.endpoint_url or AWS_ENDPOINT_URL)"),
        ([], f"error: {source}: 1 bad record(s); nothing was written; the first: {source}:2: id=x1: image not found"),
    ]
    for args, expected in cases:
        result = subprocess.run(
            [sys.executable, "jobs/prepare_data.py", f"workdir={tmp_path}", f"source={source}",
             f"image_root={root / 'img'}", f"output={root / 'prepared'}", *args],
            cwd=ROOT, capture_output=True, text=True, timeout=180, env={**os.environ, "RSVLM_DEBUG": "0"})
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 1, result.stderr
        assert lines[-1].startswith(expected), result.stderr
        assert "Traceback" not in result.stderr and "rsvlm-test-secret" not in result.stderr
    # on_error=fail: the list of problems, then the one error line.
    assert lines[-2] == f"{source}:2: id=x1: image not found: missing.png"
    assert (foreign / "notes.txt").read_text() == "mine" and not (root / "prepared").exists()


def test_records_escape_unicode_line_breaks_so_line_readers_keep_them_whole():
    from rsvlm.data.records import Record

    text = "a\u2028b\u2029c\x85d"
    record = Record(id="r1", image=None, conversations=[{"from": "human", "value": text},
                                                         {"from": "gpt", "value": "yes"}],
                    task="vqa", source="s", meta={})
    line = record.to_json()
    assert len(line.splitlines()) == 1 and "\\u2028" in line and "\\u0085" in line
    assert json.loads(line)["conversations"][0]["value"] == text
