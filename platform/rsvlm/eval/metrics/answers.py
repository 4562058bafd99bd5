"""Answer normalisation for exact-match VQA and letter extraction for single-choice questions.

Exact-match benchmarks (RSVQA-LR/HR, the FIT-RSFG VQA splits) score a free-form answer as right when it is
*the same string* as the ground truth. Models decorate answers ("Yes.", '"two"', "YES"), so both sides are
put through :func:`normalize_answer` first. The single-choice benchmark FIT-RSRC instead asks for a letter;
:func:`extract_choice` implements its published extraction rule, quirks included, so our numbers are
comparable with the published ones.
"""

from __future__ import annotations

import re

# Counting questions are graded against digits ("3"); models often spell small numbers out.
_NUMBER_WORDS = {
    word: str(value)
    for value, word in enumerate(
        (
            "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
            "fifteen sixteen seventeen eighteen nineteen twenty"
        ).split()
    )
}

# Straight, curly and back quotes a model may wrap an answer in.
_QUOTES = "\"'`\u201c\u201d\u2018\u2019"


def normalize_answer(text: str) -> str:
    """The canonical form of a free-form answer, for exact-match VQA (RSVQA / FIT-RSFG style).

    Steps, in order: lower-case; strip surrounding whitespace, quotes and trailing periods (repeated until
    nothing changes, so ``'"Yes."'`` and ``'"yes".'`` both become ``yes``); collapse internal whitespace to
    single spaces; replace the whole words ``zero`` … ``twenty`` by digits (``"two ships"`` → ``"2 ships"``).
    Decimal points inside numbers (``"2.5"``) and all other punctuation are kept: they can carry meaning.

    How this relates to the published comparisons (it is *more lenient* than both, never stricter):

    - FIT-RSFG VQA (SkySenseGPT's scripts) is scored by lower-case exact match, ``answer.lower() ==
      ground_truth.lower()``, with nothing else removed. :func:`vqa_accuracy` applies this function to both
      sides, and it starts by lower-casing, so every pair the published rule counts as right is right here
      too; in addition ``" yes"``, ``"Yes."``, ``'"yes"'`` and ``"two"`` vs ``"2"`` count as right here and wrong
      there. Scores are therefore >= the published rule's, and equal when a model answers with bare words
      or digits.
    - RSVQA (LR/HR) defines no normalisation: its answers are fixed strings (FIT-RS reports HRBEN's presence
      and comparison questions, answered ``yes`` / ``no``) and an answer is right when it is that string.
      FIT-RS's HRBEN scoring is taken to be the same lower-case exact match (its ``Eval/eval_vqa_HRBEN.py``
      was not available to check). On yes/no questions only the whitespace / quote / trailing-period
      stripping above can change a result; the number words never apply.
    - To reproduce a published number exactly, use the published rule instead (FIT-RSFG:
      ``fitrsfg_vqa_accuracy(rows, mode="reference")``; ``vqa_accuracy`` itself has no ``reference`` mode)
      and say which rule produced a number.
    """
    text = text.lower()
    previous = None
    while text != previous:
        previous = text
        text = text.strip().strip(_QUOTES).rstrip(".")
    return " ".join(_NUMBER_WORDS.get(token, token) for token in text.split())


def extract_choice(text: str, options: str = "ABCDE", *, strict: bool = False) -> str | None:
    """The option letter an answer picks, or ``None`` if it names none (FIT-RSRC's published rule).

    Rule: if the stripped answer *is* one of ``options`` (any case), return it upper-cased; otherwise return
    the first standalone capital letter among ``options`` (``\\b([A-E])\\b`` for the default options).

    Known quirk, kept on purpose so scores match the published ones: in the reference rule the English
    article in ``"A ship is moored at the pier (C)"`` is read as option ``A``. With ``strict=True`` a leading
    article — ``A`` at the very start followed by whitespace and a lower-case word — is skipped, so that
    example yields ``C``. Report which mode produced a number.
    """
    if not options:
        raise ValueError("extract_choice needs at least one option letter")
    stripped = text.strip()
    if len(stripped) == 1 and stripped.upper() in options.upper():
        return stripped.upper()
    letters = re.escape(options.upper())
    start = 0
    if strict:
        article = re.match(r"A\s+(?=[a-z])", stripped)
        if article:
            start = article.end()
    # Case-sensitive on purpose: only capitals count, so "a ship" or "see b" name no option.
    match = re.compile(rf"\b([{letters}])\b").search(stripped, start)
    return match.group(1) if match else None
