"""Tests for the synthetic remote-sensing generator: determinism, ground truth, geometry, file formats.

Answers are re-derived here from ``scenes.json`` with the test's own parsing and geometry (not the
generator's helpers), so a bug in the generator's answer code cannot hide behind itself.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rsvlm.data.boxes import Box
from rsvlm.data.records import check_record
from rsvlm.data.synthetic import (
    CATEGORIES,
    QUESTION_TYPES,
    Scene,
    corpus,
    generate_scene,
    questions_for_scene,
    render_scene,
    write_dataset,
)

SUFFIX = "Answer the question using a single word or phrase."
PLURAL_TO_CATEGORY = {
    "storage tanks": "storage tank",
    "ships": "ship",
    "airplanes": "airplane",
    "vehicles": "vehicle",
    "tennis courts": "tennis court",
}
NOUN = "|".join(sorted(PLURAL_TO_CATEGORY.values(), key=len, reverse=True))
PLURAL = "|".join(sorted(PLURAL_TO_CATEGORY, key=len, reverse=True))

PRESENCE = re.compile(rf"^Is there an? ({NOUN}) in the image\?\n{re.escape(SUFFIX)}$")
COUNT = re.compile(rf"^How many ({PLURAL}) are there in the image\?\n{re.escape(SUFFIX)}$")
COMPARISON = re.compile(rf"^Are there more ({PLURAL}) than ({PLURAL})\?\n{re.escape(SUFFIX)}$")
GROUNDING = re.compile(rf"^\[refer\] Where is the ({NOUN})\?$")
RELATION = re.compile(
    rf"^What is the position of the ({NOUN}) relative to the ({NOUN})\?\n"
    r"A\. (.+)\nB\. (.+)\nC\. (.+)\nD\. (.+)\n"
    r"Answer with the option's letter from the given choices directly\.$"
)
GEOCHAT_BOX = re.compile(r"^\{<(\d+)><(\d+)><(\d+)><(\d+)>\|<(-?\d+)>\}$")
CAPTION_PROMPT = "Describe the image in one sentence."


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("synthetic")
    summary = write_dataset(out, seed=7, num_train_images=60, num_test_images=20, image_size=128)
    return {
        "dir": out,
        "summary": summary,
        "train": json.loads((out / "train.json").read_text()),
        "test": json.loads((out / "test.json").read_text()),
        "questions": [json.loads(line) for line in (out / "test_questions.jsonl").read_text().splitlines()],
        "scenes": json.loads((out / "scenes.json").read_text()),
    }


@pytest.fixture(scope="module")
def truth(dataset: dict) -> dict[str, dict]:
    """Ground truth by image path."""
    return {scene["image"]: scene for scene in dataset["scenes"]["images"]}


def _qa_pairs(dataset: dict):
    """Every (image, question type, question, answer) in train.json, test.json and test_questions.jsonl."""
    for split in ("train", "test"):
        for record in dataset[split]:
            turns = record["conversations"]
            for human, gpt in zip(turns[0::2], turns[1::2]):
                yield record["image"], record["task"], human["value"].removeprefix("<image>\n"), gpt["value"]
    for row in dataset["questions"]:
        yield row["image"], row["category"], row["text"], row["ground_truth"]


# ----------------------------------------------------------------------------------------------- geometry helpers


def _corners(obj: dict) -> list[tuple[float, float]]:
    # Our own corner computation (y down, angle counter-clockwise on screen), independent of Box.polygon.
    t = math.radians(obj["angle"])
    out = []
    for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
        x, y = sx * obj["w"] / 2, sy * obj["h"] / 2
        out.append((obj["cx"] + x * math.cos(t) + y * math.sin(t), obj["cy"] - x * math.sin(t) + y * math.cos(t)))
    return out


def _convex_overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> bool:
    for poly in (a, b):
        for (x1, y1), (x2, y2) in zip(poly, poly[1:] + poly[:1]):
            nx, ny = y2 - y1, x1 - x2
            pa = [x * nx + y * ny for x, y in a]
            pb = [x * nx + y * ny for x, y in b]
            if max(pa) < min(pb) or max(pb) < min(pa):
                return False
    return True


def _rect(r: dict) -> list[tuple[float, float]]:
    return [(r["x1"], r["y1"]), (r["x2"], r["y1"]), (r["x2"], r["y2"]), (r["x1"], r["y2"])]


def _counts(scene: dict) -> Counter:
    return Counter(o["category"] for o in scene["objects"])


def _the(scene: dict, category: str) -> dict:
    matches = [o for o in scene["objects"] if o["category"] == category]
    assert len(matches) == 1, f"'the {category}' is ambiguous or absent in {scene['image']}"
    return matches[0]


def _relation(a: dict, b: dict) -> str:
    dx, dy = a["cx"] - b["cx"], a["cy"] - b["cy"]
    # Clear-cut only: one axis dominates by 2× and the offset is at least a fifth of the image.
    if abs(dx) >= 2 * abs(dy) and abs(dx) >= 0.2:
        return "left of" if dx < 0 else "right of"
    assert abs(dy) >= 2 * abs(dx) and abs(dy) >= 0.2, f"relation asked about an ambiguous pair: {a} {b}"
    return "above" if dy < 0 else "below"


# ----------------------------------------------------------------------------------------------- determinism


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files_and_different_seed_differs(tmp_path: Path) -> None:
    kwargs = dict(num_train_images=6, num_test_images=3, image_size=96)
    write_dataset(tmp_path / "a", seed=11, **kwargs)
    write_dataset(tmp_path / "b", seed=11, **kwargs)
    write_dataset(tmp_path / "c", seed=12, **kwargs)
    a, b, c = (_files(tmp_path / name) for name in "abc")
    assert a == b
    assert set(a) == set(c)
    assert a["scenes.json"] != c["scenes.json"]
    assert a["images/train_00000.png"] != c["images/train_00000.png"]
    assert not [name for name in a if "tmp" in name], "temporary files left behind"


def test_test_split_does_not_depend_on_train_size(tmp_path: Path) -> None:
    write_dataset(tmp_path / "a", seed=3, num_train_images=2, num_test_images=2, image_size=64)
    write_dataset(tmp_path / "b", seed=3, num_train_images=5, num_test_images=2, image_size=64)
    for name in ("test.json", "test_questions.jsonl", "images/test_00001.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_object_scale_grows_every_object_and_is_recorded(tmp_path: Path) -> None:
    from rsvlm.data.synthetic.layout import _SIZES

    kwargs = dict(seed=5, num_train_images=30, num_test_images=0, image_size=64)
    for scale in (1.0, 1.5):
        summary = write_dataset(tmp_path / str(scale), object_scale=scale, **kwargs)
        scenes = json.loads((tmp_path / str(scale) / "scenes.json").read_text())
        assert summary["object_scale"] == scenes["object_scale"] == scale
        objects = [obj for scene in scenes["images"] for obj in scene["objects"]]
        assert {obj["category"] for obj in objects} == set(CATEGORIES)
        for obj in objects:
            (lo, hi), _ = _SIZES[obj["category"]]
            assert lo * scale - 1e-4 <= obj["w"] <= hi * scale + 1e-4, (scale, obj)
    with pytest.raises(ValueError, match="object_scale"):
        write_dataset(tmp_path / "huge", object_scale=3.0, **kwargs)
    assert not (tmp_path / "huge" / "scenes.json").exists()


# ----------------------------------------------------------------------------------------------- ground truth


def test_every_answer_agrees_with_ground_truth(dataset: dict, truth: dict) -> None:
    seen = Counter()
    for image, kind, question, answer in _qa_pairs(dataset):
        scene = truth[image]
        counts = _counts(scene)
        if m := PRESENCE.match(question):
            assert kind in ("presence", "vqa")
            assert answer == ("yes" if counts[m[1]] else "no"), (image, question)
            seen["presence"] += 1
        elif m := COUNT.match(question):
            assert kind in ("count", "vqa")
            assert answer == str(counts[PLURAL_TO_CATEGORY[m[1]]]), (image, question)
            seen["count"] += 1
        elif m := COMPARISON.match(question):
            assert kind == "comparison"
            a, b = PLURAL_TO_CATEGORY[m[1]], PLURAL_TO_CATEGORY[m[2]]
            assert a != b
            assert answer == ("yes" if counts[a] > counts[b] else "no"), (image, question)
            seen["comparison"] += 1
        elif m := GROUNDING.match(question):
            assert kind == "grounding"
            obj = _the(scene, m[1])
            box = GEOCHAT_BOX.match(answer)
            assert box, answer
            x1, y1, x2, y2, angle = (int(v) for v in box.groups())
            expected = (obj["cx"] - obj["w"] / 2, obj["cy"] - obj["h"] / 2,
                        obj["cx"] + obj["w"] / 2, obj["cy"] + obj["h"] / 2)
            for got, want in zip((x1, y1, x2, y2), expected):
                assert abs(got - 100 * want) <= 0.5 + 1e-9, (answer, obj)
            assert abs(angle - obj["angle"]) <= 0.5
            seen["grounding"] += 1
        elif m := RELATION.match(question):
            assert kind == "relation"
            options = m.groups()[2:]
            assert sorted(options) == sorted(["left of", "right of", "above", "below"])
            assert answer in "ABCD" and len(answer) == 1
            chosen = options["ABCD".index(answer)]
            assert chosen == _relation(_the(scene, m[1]), _the(scene, m[2])), (image, question)
            seen["relation"] += 1
        elif question == CAPTION_PROMPT:
            assert kind == "caption"
            _check_caption(answer, scene)
            seen["caption"] += 1
        else:
            pytest.fail(f"unrecognised question: {question!r}")
    # Every question type was actually exercised.
    assert set(seen) == set(QUESTION_TYPES)


def _check_caption(caption: str, scene: dict) -> None:
    assert caption.startswith("An aerial image ") and caption.endswith(".")
    stated = Counter()
    for n, noun in re.findall(rf"(\d) ({PLURAL}|{NOUN})\b", caption):
        stated[PLURAL_TO_CATEGORY.get(noun, noun)] += int(n)
    assert stated == _counts(scene), (caption, scene["image"])
    assert ("water" in caption) == (scene["water"] is not None), caption
    roads = len(scene["roads"])
    assert ("a road" in caption) == (roads == 1) and (f"{roads} roads" in caption) == (roads > 1), caption


def test_answer_distributions(dataset: dict) -> None:
    presence = [a for _, kind, q, a in _qa_pairs(dataset) if kind == "presence"]
    share = presence.count("yes") / len(presence)
    assert 0.35 <= share <= 0.65, share
    counts = Counter(a for _, kind, _, a in _qa_pairs(dataset) if kind == "count")
    assert set(counts) <= {"0", "1", "2", "3", "4"} and "0" in counts and len(counts) >= 4
    comparisons = Counter(a for _, kind, _, a in _qa_pairs(dataset) if kind == "comparison")
    assert comparisons["yes"] > 0 and comparisons["no"] > 0


# ----------------------------------------------------------------------------------------------- geometry


def test_scene_geometry(dataset: dict) -> None:
    categories = Counter()
    for scene in dataset["scenes"]["images"]:
        assert scene["size"] == 128
        polygons = []
        for obj in scene["objects"]:
            assert obj["category"] in CATEGORIES
            categories[obj["category"]] += 1
            corners = _corners(obj)
            assert all(0.0 <= x <= 1.0 and 0.0 <= y <= 1.0 for x, y in corners), obj
            # The unrotated extents (what a geochat answer writes) must fit too, or the format clamps them.
            assert obj["w"] / 2 <= obj["cx"] <= 1 - obj["w"] / 2 and obj["h"] / 2 <= obj["cy"] <= 1 - obj["h"] / 2
            if obj["category"] == "ship":
                water = scene["water"]
                assert water is not None, "a ship without water"
                assert all(water["x1"] <= x <= water["x2"] and water["y1"] <= y <= water["y2"] for x, y in corners)
            elif scene["water"] is not None:
                assert not _convex_overlap(corners, _rect(scene["water"])), f"{obj} stands in the water"
            polygons.append(corners)
        for i in range(len(polygons)):
            for j in range(i + 1, len(polygons)):
                assert not _convex_overlap(polygons[i], polygons[j]), (scene["image"], i, j)
    assert set(categories) == set(CATEGORIES) and len(CATEGORIES) >= 5


def test_objects_are_drawn_where_their_boxes_say(dataset: dict) -> None:
    # The centre pixel of each object shows its category's colour: proof that drawing and boxes agree.
    checks = {
        "storage tank": lambda r, g, b: min(r, g, b) > 180,
        "ship": lambda r, g, b: r > 170 and b < 110,
        "airplane": lambda r, g, b: b > 190 and b > r + 40,
        "vehicle": lambda r, g, b: r > 200 and g > 170 and b < 100,
    }
    tested = Counter()
    for scene in dataset["scenes"]["images"][:20]:
        pixels = np.asarray(Image.open(dataset["dir"] / scene["image"]).convert("RGB"), dtype=int)
        size = scene["size"]
        for obj in scene["objects"]:
            x, y = int(obj["cx"] * size), int(obj["cy"] * size)
            if obj["category"] == "tennis court":
                # The court's centre is where its lines cross: look at its inner patch instead, mostly green.
                r = max(1, int(obj["h"] * size / 4))
                patch = pixels[y - r:y + r + 1, x - r:x + r + 1].reshape(-1, 3)
                green = (patch[:, 1] > patch[:, 0] + 40) & (patch[:, 1] > patch[:, 2] + 40)
                assert green.mean() > 0.5, obj
            else:
                assert checks[obj["category"]](*pixels[y, x]), (scene["image"], obj, pixels[y, x])
            tested[obj["category"]] += 1
    assert len(tested) == len(CATEGORIES)


# ----------------------------------------------------------------------------------------------- file formats


def test_llava_records_are_well_formed(dataset: dict) -> None:
    for split in ("train", "test"):
        records = dataset[split]
        ids = [r["id"] for r in records]
        assert len(ids) == len(set(ids)), f"duplicate ids in {split}.json"
        for record in records:
            assert set(record) == {"id", "image", "conversations", "task"}
            assert isinstance(record["id"], str)
            assert record["image"].startswith(f"images/{split}_") and record["image"].endswith(".png")
            assert (dataset["dir"] / record["image"]).is_file()
            turns = record["conversations"]
            assert len(turns) >= 2 and len(turns) % 2 == 0
            assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
            assert turns[0]["value"].startswith("<image>\n") and turns[0]["value"].count("<image>") == 1
            assert all("<image>" not in t["value"] for t in turns[1:])
            assert all(t["value"].strip() for t in turns)
            if record["task"] == "vqa":
                assert split == "train" and 2 <= len(turns) // 2 <= 3
            else:
                assert record["task"] in QUESTION_TYPES and len(turns) == 2
        # The platform's own record checker accepts every record as is.
        for index, record in enumerate(records):
            check_record(record, f"{split}.json", f"item {index}", "synthetic")
    train_images = {r["image"] for r in dataset["train"]}
    vqa = Counter(r["image"] for r in dataset["train"] if r["task"] == "vqa")
    assert set(vqa) == train_images and set(vqa.values()) == {1}, "one multi-turn record per training image"


def test_test_questions_format_and_circular_relations(dataset: dict) -> None:
    rows = dataset["questions"]
    assert len(rows) == len(dataset["test"])
    assert len({r["image"] for r in rows}) == 20
    by_id = defaultdict(list)
    for row in rows:
        assert set(row) == {"question_id", "image", "text", "category", "ground_truth"}
        assert row["category"] in QUESTION_TYPES and "<image>" not in row["text"]
        by_id[row["question_id"]].append(row)
    relations = 0
    for qid, group in by_id.items():
        if group[0]["category"] != "relation":
            assert len(group) == 1, f"question_id {qid} is reused"
            continue
        relations += 1
        assert len(group) == 4 and len({(r["image"], r["category"]) for r in group}) == 1
        chosen, orders = set(), set()
        for row in group:
            m = RELATION.match(row["text"])
            options = m.groups()[2:]
            orders.add(options)
            chosen.add((m[1], m[2], options["ABCD".index(row["ground_truth"])]))
            # Each row is the previous order rotated: the options keep their cyclic order.
            start = options.index("left of")
            assert options[start:] + options[:start] == ("left of", "right of", "above", "below")
        assert len(orders) == 4, "every rotation once"
        assert len(chosen) == 1, "the letters of all rotations point at the same relation"
        assert len({r["ground_truth"] for r in group}) == 4
    assert relations > 0


def test_summary_and_scenes_file(dataset: dict) -> None:
    summary, scenes = dataset["summary"], dataset["scenes"]
    assert summary["seed"] == 7 and summary["images"] == {"train": 60, "test": 20}
    assert summary["records"]["train"] == dict(Counter(r["task"] for r in dataset["train"]))
    assert summary["records"]["test"] == dict(Counter(r["task"] for r in dataset["test"]))
    by_type = Counter(r["category"] for r in dataset["questions"])
    assert summary["test_questions"] == {kind: by_type[kind] for kind in QUESTION_TYPES}
    assert scenes["seed"] == 7 and len(scenes["images"]) == 80
    assert all((dataset["dir"] / s["image"]).is_file() for s in scenes["images"])
    # Scene round trip through its JSON form.
    scene = Scene.from_dict(scenes["images"][0])
    assert {k: v for k, v in scenes["images"][0].items() if k not in ("image", "split")} == scene.to_dict()


# ----------------------------------------------------------------------------------------------- API and corpus


def test_public_functions_are_deterministic(tmp_path: Path) -> None:
    def once() -> tuple:
        rng = np.random.default_rng(5)
        scene = generate_scene(rng, "x", 128)
        image = render_scene(scene, rng)
        return scene, image.tobytes(), questions_for_scene(scene, rng)

    first, second = once(), once()
    assert first == second
    scene, pixels, questions = first
    assert all(isinstance(obj.box, Box) for obj in scene.objects)
    assert len(pixels) == 128 * 128 * 3
    assert {q["category"] for q in questions} <= set(QUESTION_TYPES)
    with pytest.raises(ValueError, match="seed"):
        write_dataset(tmp_path, seed=-1)


def _words(text: str) -> set[str]:
    return set(re.findall(r"[A-Za-z']+|\d|[^\sA-Za-z\d]", text))


def test_corpus_covers_every_word_of_the_dataset(dataset: dict) -> None:
    texts = corpus()
    assert texts == corpus() and all(isinstance(t, str) and t for t in texts)
    known = set().union(*(_words(t) for t in texts))
    used = set()
    for _, _, question, answer in _qa_pairs(dataset):
        used |= _words(question) | _words(answer)
    assert used <= known, f"missing from corpus(): {sorted(used - known)}"
    # Whole phrases too, not just words: every question template appears verbatim.
    phrases = set(texts)
    for row in dataset["questions"]:
        if row["category"] != "caption":
            assert row["text"] in phrases, row["text"]
