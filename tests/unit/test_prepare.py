"""prepare_data: every bad record is named (file, line or item, id, reason); fail writes nothing."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from rsvlm.config.schema import DataConfig, OnError
from rsvlm.data.prepare import MANIFEST, REJECTS, PrepareError, prepare_dataset


def good(record_id, image="img/a.png", answer="yes"):
    return {"id": record_id, "image": image,
            "conversations": [{"from": "human", "value": "<image>\nIs there a ship?"}, {"from": "gpt", "value": answer}]}


@pytest.fixture
def root(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (32, 24), (10, 20, 30)).save(tmp_path / "img" / "a.png")
    Image.new("RGBA", (32, 32), (10, 20, 30, 128)).save(tmp_path / "img" / "rgba.png")
    Image.new("I;16", (32, 32)).save(tmp_path / "img" / "deep.png")
    (tmp_path / "img" / "corrupt.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "outside.png").write_bytes((tmp_path / "img" / "a.png").read_bytes())
    (tmp_path / "img" / "link.png").symlink_to(tmp_path / "outside.png")
    return tmp_path


def config(root, source, on_error=OnError.fail):
    return DataConfig(name="test", source=str(source), image_root=str(root / "img"),
                      prepared_uri=str(root / "prepared"), on_error=on_error)


BAD = [
    ({"id": "x1", "image": "missing.png", "conversations": good("x")["conversations"]}, "image not found"),
    ({**good("x2"), "image": "../outside.png"}, "escapes the image root"),
    ({**good("x3"), "image": "/etc/passwd"}, "escapes the image root"),
    ({**good("x4"), "image": "link.png"}, "escapes the image root"),
    ({**good("x5"), "image": "corrupt.png"}, "does not decode"),
    ({"id": "x6", "image": "a.png", "conversations": [{"from": "gpt", "value": "hi"}]}, "roles must alternate"),
    ({"id": "x7", "image": "a.png", "conversations": [{"from": "human", "value": "no image tag"},
                                                     {"from": "gpt", "value": "yes"}]}, "exactly one <image>"),
    ({"id": "x8", "image": None, "conversations": good("x")["conversations"]}, "has no image"),
    ({"id": "x9", "images": ["a.png"], "conversations": good("x")["conversations"]}, "'images'"),
    ({**good("a1")}, "duplicate id"),
    ({"id": "x10", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nQ"},
                                                      {"from": "gpt", "value": "  "}]}, "empty 'gpt' turn"),
]


def write_jsonl(path, records, extra_lines=()):
    lines = [json.dumps(r) for r in records] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("record,reason", BAD, ids=[r["id"] for r, _ in BAD])
def test_each_defect_is_named_and_fail_writes_nothing(root, record, reason):
    source = write_jsonl(root / "data.jsonl", [good("a1", "a.png"), record])
    with pytest.raises(PrepareError) as caught:
        prepare_dataset(config(root, source))
    problem = caught.value.problems[0]
    assert reason in problem.reason
    assert problem.file == str(source) and problem.where == "2"
    assert str(problem).startswith(f"{source}:2: id=")
    assert not (root / "prepared").exists()


def test_malformed_json_line_names_line_and_column(root):
    source = write_jsonl(root / "data.jsonl", [good("a1", "a.png")], extra_lines=['{"id": "b", oops}'])
    with pytest.raises(PrepareError, match=r"data.jsonl:2:\d+: id=\?: invalid JSON"):
        prepare_dataset(config(root, source))


def test_malformed_json_list_names_line_and_column(root):
    source = root / "data.json"
    source.write_text('[\n  {"id": "a1",\n   "image": "a.png" oops}\n]')
    with pytest.raises(PrepareError, match=r"data.json:3:\d+: id=\?: invalid JSON"):
        prepare_dataset(config(root, source))


def test_skip_writes_good_records_rejects_and_manifest(root):
    records = [good("a1", "a.png"), good("a2", "rgba.png"), good("a3", "deep.png")] + [r for r, _ in BAD]
    source = write_jsonl(root / "data.jsonl", records)
    prepared = prepare_dataset(config(root, source, OnError.skip))
    manifest = json.loads((root / "prepared" / MANIFEST).read_text())
    assert manifest["records"] == 3 and manifest["rejected"] == len(BAD)
    assert manifest == prepared.manifest
    rejects = [json.loads(line) for line in (root / "prepared" / REJECTS).read_text().splitlines()]
    assert [r["id"] for r in rejects] == [r["id"] for r, _ in BAD]
    kept = [json.loads(line) for line in (root / "prepared" / manifest["shards"][0]).read_text().splitlines()]
    assert [r["id"] for r in kept] == ["a1", "a2", "a3"]
    assert kept[0]["source"] == "test" and kept[0]["conversations"][1]["value"] == "yes"
    assert not [p for p in root.iterdir() if p.name.startswith(".prepared")]  # no staging folder left


def test_llava_json_list_is_read(root):
    source = root / "data.json"
    source.write_text(json.dumps([good("a1", "a.png"), good("a2", "a.png", "no")]))
    prepared = prepare_dataset(config(root, source))
    assert prepared.manifest["records"] == 2 and prepared.manifest["images"] == 1
