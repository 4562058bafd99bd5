"""The text the generator can emit, for training the tiny model's tokenizer."""

from __future__ import annotations

from rsvlm.data.boxes import Box, BoxConvention, format_boxes
from rsvlm.data.synthetic.categories import CATEGORIES, MAX_COUNT
from rsvlm.data.synthetic.questions import (
    CAPTION_PROMPT,
    OPTION_LETTERS,
    RELATION_SUFFIX,
    SHORT_ANSWER,
    caption_text,
    comparison_question,
    count_question,
    grounding_question,
    presence_question,
    relation_question,
)
from rsvlm.data.synthetic.scene import RELATIONS


def corpus() -> list[str]:
    """Every phrase the generator can emit (questions, options, answers, captions, box text), for the tokenizer.

    Built from the same templates as the questions, so a tokenizer trained on it has seen every word.
    """
    texts: list[str] = [CAPTION_PROMPT, SHORT_ANSWER, RELATION_SUFFIX, "yes", "no", *OPTION_LETTERS]
    texts += [str(d) for d in range(10)]
    for a in CATEGORIES:
        texts += [presence_question(a), count_question(a), grounding_question(a)]
        for b in CATEGORIES:
            if a != b:
                texts.append(comparison_question(a, b))
                texts += [relation_question(a, b, rotation)[0] for rotation in range(4)]
    texts += [f"{letter}. {option}" for letter in OPTION_LETTERS for option in RELATIONS]
    # Box answers in the exact geochat layout: boxes of realistic sizes that use every digit, angles 0–359.
    for i, x in enumerate(range(2, 84, 3)):
        y, angle = (x * 7) % 76 + 2, (i * 37) % 360
        box = Box.from_corners(x / 100, y / 100, (x + 10 + i % 16) / 100, (y + 5 + i % 13) / 100, angle)
        texts.append(format_boxes([box], BoxConvention.geochat))
    # Captions: each category at every count, a few mixtures, and every terrain.
    terrains = [(water, roads) for water in (False, True) for roads in (0, 1, 2)]
    for n in range(MAX_COUNT + 1):
        for category in CATEGORIES:
            counts = {c: (n if c == category else 0) for c in CATEGORIES}
            texts += [caption_text(counts, water, roads) for water, roads in terrains]
    for n in range(1, MAX_COUNT + 1):
        texts.append(caption_text({c: n for c in CATEGORIES}, True, 1))
    return list(dict.fromkeys(texts))  # drop repeats, keep the order
