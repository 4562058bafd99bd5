"""Question and caption text, and the questions (with their answers) derived from a scene's ground truth."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from rsvlm.data.boxes import BoxConvention, format_boxes
from rsvlm.data.synthetic.categories import CATEGORIES, PLURALS
from rsvlm.data.synthetic.scene import RELATIONS, Scene, relation_between

QUESTION_TYPES: tuple[str, ...] = ("presence", "count", "comparison", "grounding", "relation", "caption")

SHORT_ANSWER = "Answer the question using a single word or phrase."
CAPTION_PROMPT = "Describe the image in one sentence."
OPTION_LETTERS: tuple[str, ...] = ("A", "B", "C", "D")
RELATION_SUFFIX = "Answer with the option's letter from the given choices directly."
_OPPOSITE = MappingProxyType({"left of": "right of", "right of": "left of", "above": "below", "below": "above"})


def _article(noun: str) -> str:
    return "an" if noun[0] in "aeiou" else "a"


def presence_question(category: str) -> str:
    return f"Is there {_article(category)} {category} in the image?\n{SHORT_ANSWER}"


def count_question(category: str) -> str:
    return f"How many {PLURALS[category]} are there in the image?\n{SHORT_ANSWER}"


def comparison_question(a: str, b: str) -> str:
    return f"Are there more {PLURALS[a]} than {PLURALS[b]}?\n{SHORT_ANSWER}"


def grounding_question(category: str) -> str:
    return f"[refer] Where is the {category}?"


def relation_question(a: str, b: str, rotation: int = 0) -> tuple[str, tuple[str, ...]]:
    """The single-choice question and its options, rotated left by ``rotation`` (CircularEval order)."""
    options = RELATIONS[rotation:] + RELATIONS[:rotation]
    lines = "\n".join(f"{letter}. {option}" for letter, option in zip(OPTION_LETTERS, options))
    return f"What is the position of the {a} relative to the {b}?\n{lines}\n{RELATION_SUFFIX}", options


def caption_text(counts: Mapping[str, int], water: bool, roads: int) -> str:
    """The templated one-sentence caption for these category counts and terrain."""
    items = [f"{n} {category if n == 1 else PLURALS[category]}" for category, n in counts.items() if n > 0]
    if not items:
        subject = "An aerial image with no objects"
    elif len(items) == 1:
        subject = f"An aerial image with {items[0]}"
    else:
        subject = f"An aerial image with {', '.join(items[:-1])} and {items[-1]}"
    terrain = (["water"] if water else []) + (["a road"] if roads == 1 else [f"{roads} roads"] if roads else [])
    return f"{subject} near {' and '.join(terrain)}." if terrain else f"{subject} on open land."


def questions_for_scene(scene: Scene, rng: np.random.Generator, *, circular: bool = False) -> list[dict]:
    """Questions about ``scene`` with their answers, derived from the ground truth.

    Each item is ``{"category": question type, "text": question, "answer": answer, "group": int}``. Items
    with the same ``group`` are one question: with ``circular`` a relation question appears once per rotation
    of its options (CircularEval), otherwise once with a random rotation.
    """
    counts = scene.counts()
    present = [c for c in CATEGORIES if counts[c] > 0]
    absent = [c for c in CATEGORIES if counts[c] == 0]
    items: list[dict] = []

    def add(kind: str, text: str, answer: str, group: Optional[int] = None) -> None:
        items.append({"category": kind, "text": text, "answer": answer,
                      "group": len({i["group"] for i in items}) if group is None else group})

    # presence: one "yes" and one "no" per scene (when the scene allows) keeps the dataset balanced 50/50.
    for pool, answer in ((present, "yes"), (absent, "no")):
        if pool:
            add("presence", presence_question(_pick(rng, pool)), answer)

    # count: mostly present categories (counts 1–4), sometimes an absent one so that 0 is seen too.
    for category in _pick_many(rng, CATEGORIES, 2, weights=[3.0 if counts[c] else 1.0 for c in CATEGORIES]):
        add("count", count_question(category), str(counts[category]))

    # comparison: prefer pairs whose counts differ, so "yes" and "no" are both common.
    pairs = [(a, b) for a in CATEGORIES for b in CATEGORIES if a != b]
    unequal = [p for p in pairs if counts[p[0]] != counts[p[1]]]
    a, b = _pick(rng, unequal if unequal and rng.random() < 0.8 else pairs)
    add("comparison", comparison_question(a, b), "yes" if counts[a] > counts[b] else "no")

    # grounding: only a category present exactly once has an unambiguous "the {category}".
    single = {c: next(o for o in scene.objects if o.category == c) for c in CATEGORIES if counts[c] == 1}
    if single:
        category = _pick(rng, list(single))
        add("grounding", grounding_question(category), format_boxes([single[category].box], BoxConvention.geochat))

    # relation: between two single objects whose relative position is clear-cut; up to two different pairs,
    # because few scenes have two singletons and this is the hardest question type to learn.
    clear = [(a, b, rel) for a in single for b in single
             if a < b and (rel := relation_between(single[a].box, single[b].box)) is not None]
    for index in rng.permutation(len(clear))[:2]:
        a, b, relation = clear[int(index)]
        if rng.random() < 0.5:  # ask both ways round: "a relative to b" and "b relative to a"
            a, b, relation = b, a, _OPPOSITE[relation]
        group = len({i["group"] for i in items})
        for rotation in range(4) if circular else [int(rng.integers(4))]:
            text, options = relation_question(a, b, rotation)
            add("relation", text, OPTION_LETTERS[options.index(relation)], group)

    add("caption", CAPTION_PROMPT, caption_text(counts, scene.water is not None, len(scene.roads)))
    return items


def vqa_turns(scene: Scene, rng: np.random.Generator) -> list[tuple[str, str]]:
    """2–3 distinct presence/count ``(question, answer)`` pairs for one multi-turn conversation."""
    counts = scene.counts()
    candidates = [(presence_question(c), "yes" if counts[c] else "no") for c in CATEGORIES]
    candidates += [(count_question(c), str(counts[c])) for c in CATEGORIES]
    n = int(rng.integers(2, 4))
    return [candidates[i] for i in rng.choice(len(candidates), size=n, replace=False)]


def _pick(rng: np.random.Generator, pool: Sequence[Any]) -> Any:
    return pool[int(rng.integers(len(pool)))]


def _pick_many(rng: np.random.Generator, pool: Sequence[str], n: int, weights: Sequence[float]) -> list[str]:
    p = np.asarray(weights, dtype=np.float64)
    return [pool[i] for i in rng.choice(len(pool), size=n, replace=False, p=p / p.sum())]
