"""prepare_data: every bad record is named (file, line or item, id, reason); fail writes nothing."""

from __future__ import annotations

import json

import pytest

from rsvlm.config.schema import DataConfig, OnError
from rsvlm.data.prepare import MANIFEST, REJECTS, PrepareError, prepare_dataset
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
