"""Public instruction-file formats → LLaVA-shaped raw records (then validated by ``check_record``).

Pure text in, records out: no file I/O here, so the same code reads local files, ``s3://`` objects or test
strings. Each produced record is ``{"id", "image", "conversations", "task", …}``; keys the adapter does not
consume are kept and end up in ``Record.meta``. ``source`` is the caller's (prepare's), and is only present
here when the file itself names one (FIT-RS QA rows do).

Formats (:class:`~rsvlm.config.data.DataFormat`):

- ``llava``: a JSON list or JSONL of ``{id, image, conversations}`` (LLaVA-1.5, RS-GPT4V). Passed through;
  ``task`` is the record's own ``task`` if it has one, else :func:`infer_task` of the first human turn.
- ``geochat``: GeoChat-Instruct, LLaVA-shaped with task prefixes in the first human turn. Same rule as
  ``llava`` (:func:`infer_task` maps ``[grounding]`` → ``grounding``, ``[refer]`` → ``referring``,
  ``[identify]`` → ``region_caption``, ``[detection]`` → ``detection``).
- ``fitrs``: (a) FIT-RS instruction files, LLaVA-shaped (as ``llava``); (b) question rows as the FIT-RSFG /
  FIT-RSRC / LLaVA evaluation scripts read them, ``{question_id, image, text | question, category,
  ground_truth}``, and the ``{id, source, image, question, answer}`` rows of SkySenseGPT's data tools. A row
  becomes one turn pair ``"<image>\\n" + question`` → ground truth; ``category`` names the task
  (:data:`FITRS_CATEGORY_TASKS`). FIT-RSRC repeats a ``question_id`` once per rotation of the options (its
  CircularEval groups them), so rows of those categories get ``id = f"{question_id}-{k}"`` with ``k`` the
  row's 0-based index among the rows of that ``question_id``; the original stays in meta (``question_id``)
  with ``rotation = k``.
- ``rsvqa``: the RSVQA pair, questions ``{"questions": [{id, img_id, type, question, answers_ids, active}]}``
  and answers ``{"answers": [{id, question_id, answer, active}]}`` (``companion_text``). Inactive questions
  are skipped; the image is ``rsvqa_image_pattern.format(img_id=…)`` (``"{img_id}.tif"`` as in the RSVQA
  archives); ``task = f"vqa_{type}"`` (type lower-cased, spaces and hyphens as ``_``: ``vqa_presence``,
  ``vqa_comp``, ``vqa_rural_urban``…); the first of ``answers_ids`` is the answer.

``where`` strings: ``"N"`` (1-based line) for JSONL, ``"item N"`` (0-based) for a
JSON list or the RSVQA ``questions`` list.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any, Iterator, Optional, Union

from rsvlm.config.data import DataFormat
from rsvlm.data.records import RecordError
from rsvlm.data.template import IMAGE_PLACEHOLDER

RawOrError = Union[dict, RecordError]

# GeoChat / SkySenseGPT task prefixes at the start of the first human turn.
PREFIX_TASKS = {
    "[grounding]": "grounding",
    "[refer]": "referring",
    "[identify]": "region_caption",
    "[detection]": "detection",
}
# Prefixes that only GeoChat-style files use ([detection] is FIT-RS's too, so it does not mean geochat).
GEOCHAT_PREFIXES = ("[grounding]", "[refer]", "[identify]")

# FIT-RSFG complex comprehension task1–task6 and FIT-RSRC's four CircularEval categories.
FITRS_CATEGORY_TASKS = {
    "task1": "detection",
    "task2": "relation_detection",
    "task3": "relation_reasoning",
    "task4": "object_reasoning",
    "task5": "region_scene_graph",
    "task6": "image_scene_graph",
    "relationship": "relation_choice",
    "object": "relation_choice",
    "subject": "relation_choice",
    "exist": "relation_choice",
}
FITRS_RSRC_CATEGORIES = frozenset({"relationship", "object", "subject", "exist"})

DEFAULT_RSVQA_IMAGE_PATTERN = "{img_id}.tif"
# Files saved by some Windows tools start with a byte-order mark, which json.loads refuses.
_BOM = "\ufeff"
# Records looked at by detect_format: enough to meet a GeoChat prefix in a mixed file, cheap on any file.
DETECT_SAMPLE = 200

_MULTIPLE_CHOICE = re.compile(r"answer with the option[’']s letter", re.IGNORECASE)
_CAPTION = re.compile(r"\bcaption\b|^(?:(?:please|briefly|can you|could you)\s+)*describe\b", re.IGNORECASE)
_COUNT = re.compile(r"\bhow many\b", re.IGNORECASE)
# Anchored: "What is there …" must not read as a presence question.
_PRESENCE = re.compile(r"^(?:is|are) there\b", re.IGNORECASE)


def infer_task(question: str) -> str:
    """A task name from a question's wording (pure; first rule that matches wins).

    ``<image>`` and surrounding whitespace are ignored. Rules: a ``[grounding]`` / ``[refer]`` / ``[identify]``
    / ``[detection]`` prefix (:data:`PREFIX_TASKS`); "Answer with the option's letter" → ``multiple_choice``;
    the word "caption", or a question starting with "Describe" (optionally after "Please" / "Briefly" /
    "Can you" / "Could you") → ``caption``; "How many" → ``vqa_count``; starting with "Is there" / "Are
    there" → ``vqa_presence``; anything else → ``conversation``.
    """
    text = question.replace(IMAGE_PLACEHOLDER, " ").strip()
    lowered = text.lower()
    for prefix, task in PREFIX_TASKS.items():
        if lowered.startswith(prefix):
            return task
    if _MULTIPLE_CHOICE.search(text):
        return "multiple_choice"
    if _CAPTION.search(text):
        return "caption"
    if _COUNT.search(text):
        return "vqa_count"
    if _PRESENCE.search(text):
        return "vqa_presence"
    return "conversation"


def detect_format(text: str, file_name: str) -> DataFormat:
    """The format of an instruction file from its content (never ``auto``).

    A JSON object with ``questions`` → ``rsvqa``; rows with ``question_id`` + ``ground_truth`` (or FIT-RS
    ``question`` + ``answer`` rows) → ``fitrs``; conversations whose first human turn starts with
    ``[grounding]`` / ``[refer]`` / ``[identify]`` in the first :data:`DETECT_SAMPLE` records → ``geochat``;
    other conversations → ``llava``. Raises ``ValueError`` naming the file when none fits, and the syntax
    error (:class:`RecordError` with line and column) when the file is a JSON document that does not parse.
    """
    text = text.removeprefix(_BOM)
    stripped = text.lstrip()
    if not stripped:
        raise ValueError(f"{file_name}: empty file, cannot detect its format")
    rows: list[Any] = []
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
        if not stripped.startswith("["):  # JSONL: look at the first lines that parse
            for line in text.splitlines():
                if len(rows) >= DETECT_SAMPLE:
                    break
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        continue
    if isinstance(whole, dict):
        if isinstance(whole.get("questions"), list):
            return DataFormat.rsvqa
        if "answers" in whole:
            raise ValueError(f"{file_name}: looks like an RSVQA answers file; give the questions file as "
                             "data.source and this one as data.answers")
        rows = [whole]  # a one-line JSONL file
    elif isinstance(whole, list):
        rows = whole[:DETECT_SAMPLE]
    fmt = _format_of_rows([row for row in rows if isinstance(row, dict)])
    if fmt is None and not rows:
        # Unparseable JSON: guess from key names so parse_records can then report the syntax error with its
        # line and column instead of a vaguer "unknown format".
        fmt = _format_of_keys(text[:65536])
        if fmt is None and stripped.startswith(("[", "{")) and whole is None:
            _load_json(text, file_name, "")  # the syntax error is the problem to report: raises RecordError
    if fmt is None:
        raise ValueError(
            f"{file_name}: cannot detect the instruction format: expected LLaVA/GeoChat records with "
            "'conversations', FIT-RS question rows with 'question_id' and 'ground_truth', or an RSVQA "
            "questions JSON with 'questions'; set data.format explicitly if the file is one of these")
    return fmt


def parse_records(text: str, file_name: str, fmt: DataFormat, *, companion_text: Optional[str] = None,
                  rsvqa_image_pattern: str = DEFAULT_RSVQA_IMAGE_PATTERN) -> Iterator[tuple[str, RawOrError]]:
    """``(where, raw)`` for every record of ``text`` in format ``fmt`` (``auto`` is detected first).

    ``raw`` is a LLaVA-shaped dict for ``check_record`` or a :class:`RecordError` for one bad line (invalid
    JSON, an RSVQA question without its answer…); bad lines do not stop the rest. A JSON document that does
    not parse at all raises ``RecordError(file, "LINE:COL", None, "invalid JSON: …")``. ``companion_text`` is
    the RSVQA answers JSON (required for ``rsvqa``).
    """
    text = text.removeprefix(_BOM)
    if fmt is DataFormat.auto:
        fmt = detect_format(text, file_name)
    if fmt is DataFormat.rsvqa:
        yield from _rsvqa_records(text, file_name, companion_text, rsvqa_image_pattern)
        return
    if fmt in (DataFormat.llava, DataFormat.geochat):
        for where, row in _rows(text, file_name):
            yield where, row if isinstance(row, RecordError) else _conversation_record(row)
        return
    if fmt is DataFormat.fitrs:
        rotations: Counter[str] = Counter()  # rows seen so far per FIT-RSRC question_id
        for where, row in _rows(text, file_name):
            if isinstance(row, RecordError) or not isinstance(row, dict) or "conversations" in row:
                yield where, row if isinstance(row, RecordError) else _conversation_record(row)
            else:
                yield where, _fitrs_question_record(row, file_name, where, rotations)
        return
    raise ValueError(f"{file_name}: unsupported format {fmt!r}")


def _rows(text: str, file_name: str) -> Iterator[tuple[str, Any]]:
    """``(where, parsed)`` of a JSON list (``item N``) or JSONL (``N``; a bad line yields a RecordError)."""
    if text.lstrip().startswith("["):
        items = _load_json(text, file_name, "")
        for index, item in enumerate(items):
            yield f"item {index}", item
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"{number}", json.loads(line)
        except json.JSONDecodeError as exc:
            yield f"{number}", RecordError(file_name, f"{number}:{exc.colno}", None, f"invalid JSON: {exc.msg}")


def _load_json(text: str, file_name: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(file_name, f"{exc.lineno}:{exc.colno}", None, f"invalid JSON{what}: {exc.msg}") from exc


def _conversation_record(row: Any) -> Any:
    """A LLaVA-shaped row with its task; anything malformed is passed on for ``check_record`` to name."""
    if not isinstance(row, dict):
        return row
    record = dict(row)
    if not record.get("task"):
        record["task"] = infer_task(_first_human_turn(row))
    return record


def _first_human_turn(row: dict) -> str:
    turns = row.get("conversations")
    if isinstance(turns, list) and turns and isinstance(turns[0], dict) and isinstance(turns[0].get("value"), str):
        return turns[0]["value"]
    return ""


def _fitrs_question_record(row: dict, file_name: str, where: str, rotations: Counter[str]) -> RawOrError:
    """One FIT-RS / LLaVA-style question row as a single-turn record (see the module docstring)."""
    question_id = row.get("question_id", row.get("id"))
    question = row.get("text", row.get("question"))
    # ground_truth first: answer files also carry the model's "answer", which must never become a label.
    answer = row.get("ground_truth", row.get("answer"))
    shown_id = str(question_id) if question_id is not None else None
    if not isinstance(question, str) or not question.strip():
        return RecordError(file_name, where, shown_id, "question row has no 'text' or 'question'")
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        return RecordError(file_name, where, shown_id, "question row has no 'ground_truth' (or 'answer')")
    category = row.get("category")
    category_key = str(category).strip().lower() if category is not None else ""
    record = {k: v for k, v in row.items() if k not in ("id", "image", "image_id", "text", "question",
                                                         "ground_truth", "answer")}
    record["id"] = shown_id
    if question_id is not None and category_key in FITRS_RSRC_CATEGORIES:
        rotation = rotations[shown_id]
        rotations[shown_id] += 1
        record["id"] = f"{question_id}-{rotation}"
        record["question_id"] = question_id
        record["rotation"] = rotation
    # Evaluation answer files name the image "image_id"; question files "image".
    record["image"] = row.get("image", row.get("image_id"))
    human = question if IMAGE_PLACEHOLDER in question else f"{IMAGE_PLACEHOLDER}\n{question}"
    record["conversations"] = [{"from": "human", "value": human}, {"from": "gpt", "value": str(answer)}]
    if category_key:
        record["task"] = FITRS_CATEGORY_TASKS.get(category_key, str(category).strip())
    else:
        record["task"] = infer_task(question)
    return record


def _rsvqa_records(text: str, file_name: str, companion_text: Optional[str],
                   image_pattern: str) -> Iterator[tuple[str, RawOrError]]:
    if companion_text is None:
        raise ValueError(f"{file_name}: format rsvqa needs the answers JSON too (data.answers)")
    questions = _load_json(text, file_name, "")
    answers_doc = _load_json(companion_text.removeprefix(_BOM), file_name, " in the RSVQA answers file")
    if not isinstance(questions, dict) or not isinstance(questions.get("questions"), list):
        raise RecordError(file_name, "1:1", None, "RSVQA questions file must be an object with a 'questions' list")
    if not isinstance(answers_doc, dict) or not isinstance(answers_doc.get("answers"), list):
        raise RecordError(file_name, "1:1", None, "RSVQA answers file must be an object with an 'answers' list")
    answers = {a.get("id"): a for a in answers_doc["answers"] if isinstance(a, dict) and _hashable(a.get("id"))}
    for index, question in enumerate(questions["questions"]):
        if isinstance(question, dict) and question.get("active") is False:
            continue
        where = f"item {index}"
        yield where, _rsvqa_record(question, answers, file_name, where, image_pattern)


def _rsvqa_record(question: Any, answers: dict, file_name: str, where: str, image_pattern: str) -> Any:
    """One active RSVQA question with its answer as a single-turn record, or the RecordError saying why not."""
    if not isinstance(question, dict):
        return question  # check_record names it
    question_id = question.get("id")
    shown_id = str(question_id) if question_id is not None else None
    answer_ids = question.get("answers_ids")
    if not isinstance(answer_ids, list) or not answer_ids or not _hashable(answer_ids[0]):
        return RecordError(file_name, where, shown_id, f"RSVQA question {question_id} has no 'answers_ids'")
    # An inactive answer of an active question is still its answer (as the public loaders read it).
    answer = answers.get(answer_ids[0])
    if answer is None:
        return RecordError(file_name, where, shown_id,
                           f"RSVQA question {question_id}: answer id {answer_ids[0]} is not in the answers file")
    if answer.get("question_id", question_id) != question_id:
        return RecordError(file_name, where, shown_id, f"RSVQA question {question_id}: answer id {answer_ids[0]} "
                                                       f"belongs to question {answer.get('question_id')}")
    text, img_id = question.get("question"), question.get("img_id")
    if not isinstance(text, str) or img_id is None:
        return RecordError(file_name, where, shown_id, f"RSVQA question {question_id} needs 'question' and 'img_id'")
    record = {k: v for k, v in question.items() if k not in ("id", "question", "answers_ids", "active")}
    kind = re.sub(r"[\s-]+", "_", str(question.get("type") or "unknown").strip().lower())
    record.update({
        "id": shown_id,
        "image": image_pattern.format(img_id=img_id),
        "conversations": [{"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{text}"},
                          {"from": "gpt", "value": str(answer.get("answer"))}],
        "task": f"vqa_{kind}",
    })
    return record


def _hashable(value: Any) -> bool:
    return isinstance(value, (int, str))


def _format_of_rows(rows: list[dict]) -> Optional[DataFormat]:
    if any(_is_question_row(row) for row in rows):
        return DataFormat.fitrs
    conversations = [row for row in rows if isinstance(row.get("conversations"), list)]
    if not conversations:
        return None
    for row in conversations:
        first = _first_human_turn(row).replace(IMAGE_PLACEHOLDER, " ").strip().lower()
        if first.startswith(GEOCHAT_PREFIXES):
            return DataFormat.geochat
    return DataFormat.llava


def _is_question_row(row: dict) -> bool:
    if "conversations" in row:
        return False
    if "question_id" in row and "ground_truth" in row:
        return True
    return "id" in row and "question" in row and "answer" in row and "image" in row


def _format_of_keys(head: str) -> Optional[DataFormat]:
    if '"questions"' in head and '"answers_ids"' in head:
        return DataFormat.rsvqa
    if '"question_id"' in head and '"ground_truth"' in head:
        return DataFormat.fitrs
    if '"conversations"' in head:
        return DataFormat.geochat if any(p in head for p in GEOCHAT_PREFIXES) else DataFormat.llava
    return None
