"""FIT-RSFG complex comprehension: the parsed forms of answers and the text parsers that produce them.

The published evaluation (om-ai-lab/ImageRAG ``codebase/inference/FIT_Eval/eval_complex_comprehension.py``, the
metric code SkySenseGPT's ``Eval_scripts/evaluation.sh`` runs) reads free text with regular expressions. This
module reproduces those reads (``mode="reference"``) or fixes their faults (``mode="strict"``) and hands plain
objects to the scorers in :mod:`.detection` and :mod:`.scene_graph`, so that scoring is testable on parsed
objects without any text.

Conventions shared by every task:

- Boxes are FIT-RS ``{<cx><cy><w><h>|<θ>}`` in [0, 100] of a 512 px tile (see :mod:`rsvlm.data.boxes`); they
  are parsed into :class:`~rsvlm.data.boxes.Box` in fractions of the tile, and the scorers convert them to
  pixels before taking IoU.
- A box whose ``w`` **or** ``h`` is **< 2** in the [0, 100] units (≈ 10 px) is dropped on both sides, as the
  published ``filter_rbox`` does (a side of exactly 2 is kept). Malformed boxes (not five numbers) are dropped.
- Plural class names are made singular the way the published code does it, per task (one trailing ``s``, or
  every trailing ``s`` in task 1); none of the 48 FIT-RS class names ends in ``s``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from rsvlm.data.boxes import Box, BoxConvention, parse_boxes

Mode = Literal["reference", "strict"]
MODES: tuple[str, ...] = ("reference", "strict")

# The 48 object classes and 58 relations, in the published order (eval_complex_comprehension.py). The order
# matters in reference mode: unknown classes fall into the *last* class (a negative index in the published
# code) and the per-relation mean recall is reported with names shifted by one position.
FITRS_CLASSES: tuple[str, ...] = (
    "airplane", "boat", "taxiway", "boarding_bridge", "tank", "ship", "crane", "car", "apron", "dock",
    "storehouse", "goods_yard", "truck", "terminal", "runway", "breakwater", "car_parking", "bridge",
    "cooling_tower", "truck_parking", "chimney", "vapor", "coal_yard", "genset", "smoke", "gas_station",
    "lattice_tower", "substation", "containment_vessel", "flood_dam", "ship_lock", "gravity_dam", "arch_dam",
    "cement_concrete_pavement", "toll_gate", "tower_crane", "engineering_vehicle", "unfinished_building",
    "foundation_pit", "wind_mill", "intersection", "roundabout", "ground_track_field", "soccer_ball_field",
    "basketball_court", "tennis_court", "baseball_diamond", "stadium",
)  # fmt: skip
FITRS_RELATIONS: tuple[str, ...] = (
    "over", "not co-storage with", "connect", "parallelly parked on", "intersect", "co-storage with", "converge",
    "parallelly docked at", "adjacent", "within safe distance of", "through", "approach", "away from",
    "randomly parked on", "run along", "isolatedly parked on", "around", "randomly docked at", "drive off",
    "drive toward", "within danger distance of", "supply to", "isolatedly docked at", "pass across",
    "not run along", "slightly emit", "exhaust to", "violently emit", "incorrectly parked on", "pass under",
    "directly transmit electricity to", "indirectly transmit electricity to", "pass through",
    "within same line of", "within different line of", "directly connected to", "indirectly connected to",
    "driving in the same direction with", "driving in the opposite direction with", "driving alongside with",
    "driving in the same lane with", "driving in the different lane with", "working on", "not working on",
    "parked alongside with", "not parked alongside with", "in the same parking with",
    "in the different parking with", "parking in the same apron with", "parking in the different apron with",
    "running along the same taxiway with", "running along the different taxiway with",
    "running along the different runway with", "docking at the same breakwater with",
    "docking at the same dock with", "docking at the different dock with", "docked alongside with",
    "not docked alongside with",
)  # fmt: skip

MIN_SIDE = 2.0  # percent of the tile; boxes with w or h below it are dropped (published filter_rbox)
# Task 4 boxes written without a category: the published code gives them class id 1, i.e. "boat".
REFERENCE_UNCATEGORISED_LABEL = FITRS_CLASSES[1]
# The box the published task-5 parser gives the region the question is about: (50, 50, 20, 20, 0) in [0, 100].
REGION_PLACEHOLDER = Box(0.5, 0.5, 0.2, 0.2, 0.0)


@dataclass(frozen=True)
class Detection:
    """One object box with its class; ``label`` is ``None`` when the text names no class (strict task 4)."""

    label: str | None
    box: Box


@dataclass(frozen=True)
class SceneObject:
    """A node of a scene graph; ``box`` is ``None`` for the region a task-5 question gives (not scored)."""

    label: str | None
    box: Box | None


@dataclass(frozen=True)
class SceneGraph:
    """Objects plus (subject index, relation, object index) edges, as scene-graph evaluation expects."""

    objects: tuple[SceneObject, ...]
    relations: tuple[tuple[int, str, int], ...]


@dataclass(frozen=True)
class RelationTriple:
    """A task-3 answer: subject and object class names and the relations named between them."""

    subject: str
    object: str
    relations: tuple[str, ...]


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")


def fitrs_boxes(text: str) -> list[Box]:
    """Every well-formed FIT-RS box in ``text``, in order, without those whose w or h is < 2 (of 100)."""
    return [box for box in parse_boxes(text, BoxConvention.fitrs) if _big_enough(box)]


def _big_enough(box: Box) -> bool:
    # Box holds fractions; the published filter compares the written [0, 100] numbers. round() keeps a written
    # "2.00" (0.02 * 100 = 2.0000000000000004 on some paths) from being dropped by float noise.
    return round(box.w * 100, 6) >= MIN_SIDE and round(box.h * 100, 6) >= MIN_SIDE


def _singular(name: str) -> str:
    return name[:-1] if name.endswith("s") else name


# ------------------------------------------------------------------------------------ task 1: detection

_TASK1_CATEGORY = re.compile(r"There (?:is|are) \d+ (.+?)s? in the image")


def parse_detection(
    ground_truth: str, answer: str, *, mode: Mode = "reference"
) -> tuple[list[Detection], list[Detection]] | None:
    """Task 1: the (ground-truth, predicted) detections of one image, or ``None`` when the row is not scored.

    The class comes from the ground truth's "There are N <class>s in the image" and is given to every box on
    both sides (the question asks for one class). Reference: a ground truth without that sentence (a negative
    sample) makes the row unscored. Strict: the row is scored (its predicted boxes are false positives); the
    class is then read from the answer's sentence, else it is ``None`` (the uncategorised pseudo-class).
    """
    check_mode(mode)
    match = _TASK1_CATEGORY.search(ground_truth)
    if match is None:
        if mode == "reference":
            return None
        match = _TASK1_CATEGORY.search(answer)
    label = match.group(1).rstrip("s") if match else None
    return (
        [Detection(label, box) for box in fitrs_boxes(ground_truth)],
        [Detection(label, box) for box in fitrs_boxes(answer)],
    )


# ------------------------------------------------------------------------------ task 2 and task 3: relations

_ANGLE_TOKEN = re.compile(r"<(.*?)>")
_SUBJECT = re.compile(r"subject: (.+?),")
_OBJECT = re.compile(r"object: (.+?),")
_REL = re.compile(r"<rel>(.*?)</rel>")
_REF = re.compile(r"<ref>(.*?)</ref>")
_RBOX = re.compile(r"<rbox>(.*?)</rbox>")


def parse_relation_tokens(text: str) -> list[str]:
    """Task 2: every ``<…>`` token ("tank <co-storage with> tank" → ``["co-storage with"]``), as published."""
    return _ANGLE_TOKEN.findall(text)


def parse_relation_triple(text: str) -> RelationTriple | None:
    """Task 3: ``subject: X, object: Y, … <rel>R</rel>…``; ``None`` unless all three parts are there."""
    subject, obj, relations = _SUBJECT.search(text), _OBJECT.search(text), _REL.findall(text)
    if subject is None or obj is None or not relations:
        return None
    return RelationTriple(subject.group(1), obj.group(1), tuple(relations))


# ----------------------------------------------------------------------------- task 4: object reasoning

_REF_RBOX = re.compile(r"<ref>(.*?)</ref><rbox>\((.*?)\)</rbox>")


def is_categorised(ground_truth: str) -> bool:
    """Whether a task-4 ground truth names categories; the answer is then parsed the same way (published rule)."""
    return "categories" in ground_truth


def parse_object_reasoning(text: str, *, categorised: bool, mode: Mode = "reference") -> list[Detection]:
    """Task 4: the boxes of one answer or ground truth, with their classes; exact duplicates removed (published).

    ``categorised`` (from :func:`is_categorised` on the ground truth): read ``<ref>class</ref><rbox>(…)</rbox>``
    groups. Reference reproduces the published zip of *one class per group* against *one entry per box*: a
    group with several boxes shifts the classes of the boxes after it and the last boxes are lost. Strict
    gives every box its own group's class.

    Not categorised: every box in the text. Reference labels them all ``"boat"`` (the published class id 1),
    pooling every such question into that one class; strict labels them ``None``, a pseudo-class of its own
    (:data:`~.detection.UNCATEGORISED`), so they no longer mix with real boat detections.
    """
    check_mode(mode)
    pairs: list[tuple[Box, str | None]]
    if categorised:
        groups = [(_singular(name), fitrs_boxes(boxes)) for name, boxes in _REF_RBOX.findall(text)]
        if mode == "reference":
            labels = [name for name, _ in groups]
            pairs = list(zip((box for _, boxes in groups for box in boxes), labels))
        else:
            pairs = [(box, name) for name, boxes in groups for box in boxes]
    else:
        label = REFERENCE_UNCATEGORISED_LABEL if mode == "reference" else None
        pairs = [(box, label) for box in fitrs_boxes(text)]
    return [Detection(label, box) for box, label in dict.fromkeys(pairs)]


# ---------------------------------------------------------------------- task 5: region-level scene graph

_DEFAULT_RBOX = "({<0.><0.><0.><0.>|<0>})"  # published fallback for a sentence without <rbox>: dropped (w = 0)


def parse_region_scene_graph(text: str, *, mode: Mode = "reference") -> SceneGraph:
    """Task 5: the relations of the region a question points at, one triplet per object box.

    The first sentence (describing the region) is skipped; every further sentence that contains ``it is``
    gives (region, relation, object) triplets and one that contains ``> it`` gives (object, relation, region),
    one per object box. The region's class is never compared (the published code leaves it empty on both
    sides) and its box is the question's, so it is not scored.

    Reference reproduces the published indexing fault: the (subject, object) boxes of each triplet are stacked
    into one list but looked up by ids that count triplets, not rows. Triplet k's object is row k, so from the
    second triplet on, triplets are scored against other triplets' boxes and classes, and when the first
    sentence has the ``X <rel> it`` form the first object's box stands for the region in every triplet: an
    error in that one box fails them all. Strict gives every triplet its own object and no region box.
    """
    check_mode(mode)
    region = SceneObject("", REGION_PLACEHOLDER) if mode == "reference" else SceneObject(None, None)
    pairs: list[tuple[SceneObject, SceneObject]] = []
    relations: list[tuple[int, str, int]] = []
    next_id = 1
    for sentence in text.replace("\n", " ").split(". ")[1:]:
        if not sentence:
            continue
        sentence = sentence.lower()
        relation = next(iter(_REL.findall(sentence)), "background")
        name = next(iter(_REF.findall(sentence)), "background")
        boxes = parse_boxes(next(iter(_RBOX.findall(sentence)), _DEFAULT_RBOX), BoxConvention.fitrs)
        forward = "it is" in sentence
        if not forward and "> it" not in sentence:
            continue
        if len(boxes) > 1:  # plural only stripped when several boxes are written (published)
            name = _singular(name)
        for box in filter(_big_enough, boxes):
            obj = SceneObject(name, box)
            pairs.append((region, obj) if forward else (obj, region))
            relations.append((0, relation, next_id) if forward else (next_id, relation, 0))
            next_id += 1
    if mode == "reference":
        objects = tuple(node for pair in pairs for node in pair)
    else:
        objects = (region,) + tuple(obj if subject is region else subject for subject, obj in pairs)
    return SceneGraph(objects, tuple(relations))


# ----------------------------------------------------------------------- task 6: image-level scene graph


def parse_image_scene_graph(
    text: str, *, answer: bool, mode: Mode = "reference"
) -> tuple[SceneGraph, list[Detection]] | None:
    """Task 6: the scene graph and the detections of one answer (``answer=True``) or ground truth.

    Sentences (split on ". ") with a ``<rel>`` give triplets: the first two ``<ref>`` are the subject and
    object classes, the first two ``<rbox>`` their boxes, one triplet per subject box. Sentences without
    ``<rel>`` but with ``<rbox>`` give detections (first ``<ref>`` and first ``<rbox>``). Ground-truth
    sentences containing "sorry" are skipped.

    Returns ``None`` where the published code skips the whole row (reference only): an answer whose relation
    sentence has more than one object box (an assertion the published loop catches), or more than two
    ``<ref>`` or ``<rbox>`` (an unpacking error). The published code would crash on such a ground truth; it
    is skipped the same way here. Strict pairs every subject box with every object box and
    uses the first two ``<ref>``/``<rbox>``.
    """
    check_mode(mode)
    objects: list[SceneObject] = []
    relations: list[tuple[int, str, int]] = []
    detections: list[Detection] = []
    for sentence in text.replace("\n", " ").split(". "):
        sentence = sentence.lower()
        if "sorry" in sentence and not answer:
            continue
        found = _REL.findall(sentence)
        if found:
            names, boxes_text = _REF.findall(sentence), _RBOX.findall(sentence)
            if mode == "reference" and (len(names) > 2 or len(boxes_text) > 2):
                return None
            names += ["background"] * (2 - len(names))
            boxes_text += [_DEFAULT_RBOX] * (2 - len(boxes_text))
            subject_name, object_name = _singular(names[0]), _singular(names[1])
            subjects = parse_boxes(boxes_text[0], BoxConvention.fitrs)
            targets = parse_boxes(boxes_text[1], BoxConvention.fitrs)
            if not targets:
                continue
            if mode == "reference" and len(targets) > 1:
                return None
            for subject_box in filter(_big_enough, subjects):
                for object_box in filter(_big_enough, targets[:1] if mode == "reference" else targets):
                    relations.append((len(objects), found[0], len(objects) + 1))
                    objects += [SceneObject(subject_name, subject_box), SceneObject(object_name, object_box)]
        elif "<rbox>" in sentence:
            name = _singular(next(iter(_REF.findall(sentence)), "background"))
            for box in fitrs_boxes(next(iter(_RBOX.findall(sentence)), _DEFAULT_RBOX)):
                detections.append(Detection(name, box))
    return SceneGraph(tuple(objects), tuple(relations)), detections
