"""The canonical instruction record, reading LLaVA-style files, and checking every record.

Canonical record (one JSON object per line in prepared shards)::

    {"id": str, "image": str | null, "conversations": [{"from": "human"|"gpt", "value": str}, …],
     "task": str, "source": str, "meta": {…}}

``image`` is relative to the dataset's image root. The first human turn holds exactly one ``<image>`` when
``image`` is set and none otherwise.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from rsvlm.data.template import IMAGE_PLACEHOLDER

ROLES = ("human", "gpt")


@dataclass
class Record:
    id: str
    image: Optional[str]
    conversations: list[dict[str, str]]
    task: str = "conversation"
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """One JSON line. U+2028, U+2029 and U+0085 are escaped: JSON allows them raw, but readers that split
        lines at every Unicode line break (Ray Data's ``read_text``) would cut the record in two."""
        return json.dumps(asdict(self), ensure_ascii=False).translate(_LINE_BREAKS_ESCAPED)


_LINE_BREAKS_ESCAPED = {ord(c): f"\\u{ord(c):04x}" for c in "\u2028\u2029\x85"}


class RecordError(ValueError):
    """A record that cannot be used; ``str()`` is ``FILE:WHERE: id=…: reason``."""

    def __init__(self, file: str, where: str, record_id: Optional[str], reason: str):
        self.file, self.where, self.record_id, self.reason = file, where, record_id, reason
        super().__init__(f"{file}:{where}: id={record_id if record_id is not None else '?'}: {reason}")

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "where": self.where, "id": self.record_id, "reason": self.reason}


def check_record(raw: Any, file: str, where: str, source: str) -> Record:
    """A canonical :class:`Record` from a raw LLaVA record, or :class:`RecordError` saying what is wrong."""
    if isinstance(raw, RecordError):
        raise raw
    record_id = str(raw.get("id")) if isinstance(raw, dict) and raw.get("id") is not None else None

    def fail(reason: str) -> RecordError:
        return RecordError(file, where, record_id, reason)

    if not isinstance(raw, dict):
        raise fail(f"expected a JSON object, got {type(raw).__name__}")
    if record_id is None:
        raise fail("missing 'id'")
    if "images" in raw and "image" not in raw:
        raise fail("has 'images' but this format expects a single 'image' string")
    image = raw.get("image")
    if image is not None and (not isinstance(image, str) or not image.strip()):
        raise fail("'image' must be a non-empty string or null")
    turns = raw.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise fail("'conversations' must be a non-empty list")
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get("from") not in ROLES or not isinstance(turn.get("value"), str):
            raise fail(f"turn {index}: expected {{'from': 'human'|'gpt', 'value': str}}")
        if turn["from"] != ROLES[index % 2]:
            raise fail(f"turn {index}: roles must alternate human/gpt starting with human, got '{turn['from']}'")
        if not turn["value"].strip():
            raise fail(f"turn {index}: empty '{turn['from']}' turn")
    if turns[-1]["from"] != "gpt":
        raise fail("the last turn must be the assistant's ('gpt'): a question without an answer teaches nothing")
    placeholders = [turn["value"].count(IMAGE_PLACEHOLDER) for turn in turns]
    if image is not None and (placeholders[0] != 1 or sum(placeholders) != 1):
        raise fail(f"an image is set, so the first human turn needs exactly one {IMAGE_PLACEHOLDER} "
                   f"and no other turn any (found {placeholders})")
    if image is None and sum(placeholders):
        raise fail(f"{IMAGE_PLACEHOLDER} appears but the record has no image")
    conversations = [{"from": turn["from"], "value": turn["value"]} for turn in turns]
    meta = {k: v for k, v in raw.items() if k not in ("id", "image", "conversations", "task", "source")}
    own_source = raw.get("source") if isinstance(raw.get("source"), str) and raw.get("source").strip() else None
    return Record(record_id, image, conversations, str(raw.get("task") or "conversation"), own_source or source, meta)
