"""Prepared records → fixed-width training arrays, and arrays → model batches.

:class:`SampleBuilder` runs inside Ray Data's ``map_batches`` (CPU, in parallel with training): it decodes
and preprocesses images and tokenizes with label masking. Rows are padded to ``max_length`` so every block
has one fixed schema; :func:`collate` trims each batch back to its longest row.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from rsvlm.config.model import ImageAspect
from rsvlm.data.images import normalize_pixels, open_rgb, resize_images
from rsvlm.data.storage import Storage, resolve_inside
from rsvlm.data.template import IGNORE_INDEX, ChatTemplate, tokenize_conversation
from rsvlm.errors import JobError

# What a bad line of a shard tells the user to do: the shards are prepare_data's output.
REPREPARE = "the shard no longer holds what prepare_data wrote: run jobs/prepare_data.py again"


def parse_lines(batch: dict[str, np.ndarray], storage: Optional[Storage] = None,
                shard_uris: Optional[dict[str, str]] = None, keys: tuple[str, ...] = ("id", "conversations")
                ) -> list[dict[str, Any]]:
    """The records of a batch of prepared JSON lines (``batch["text"]``), each a JSON object with ``keys``.

    A line that is not one raises :class:`~rsvlm.errors.JobError` ``<shard>:<line>: invalid JSON …`` when the
    batch has Ray Data's ``path`` column (``read_text(..., include_paths=True)``): ``shard_uris`` maps those
    paths back to URIs, and the line number is found only then, by reading that shard again (``storage``) and
    looking for the bad text, so the good path costs nothing.
    """
    texts = batch["text"]
    try:
        records = [json.loads(line) for line in texts]
        bad = next((row for row, record in enumerate(records)
                    if not isinstance(record, dict) or not all(key in record for key in keys)), None)
    except ValueError:
        records, bad = None, None
    if bad is None and records is not None:
        return records
    for row, line in enumerate(texts):  # the error path: find the first bad row and say why
        try:
            record = json.loads(line)
        except ValueError as exc:
            column = f"; column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
            problem = f"invalid JSON ({getattr(exc, 'msg', exc)}{column})"
            break
        if row == bad:
            missing = [key for key in keys if not isinstance(record, dict) or key not in record]
            problem = "not a prepared record (no " + ", ".join(repr(key) for key in missing) + ")"
            break
    paths = batch.get("path")
    text = str(texts[row])
    where, whole_line = _locate(str(paths[row]) if paths is not None else None, text, storage, shard_uris)
    if whole_line is not None and whole_line != text and _is_json(whole_line):
        # The shard is as prepare_data wrote it; Ray Data's read_text split one of its lines (str.splitlines
        # breaks at U+2028, U+2029 and U+0085 too, which JSON leaves unescaped inside strings).
        raise JobError(where, "the record holds a line-separator character (U+2028, U+2029 or U+0085) at which "
                       f"Ray Data splits lines, so it arrives in pieces: {_snippet(text)}",
                       "remove or escape that character in the source and run jobs/prepare_data.py again")
    raise JobError(where, f"{problem}: {_snippet(text)}", REPREPARE)


def _locate(path: Optional[str], text: str, storage: Optional[Storage],
            shard_uris: Optional[dict[str, str]]) -> tuple[str, Optional[str]]:
    """``(<shard URI>:<line>, that whole line)`` for ``text``, read again from its shard (``<shard URI>`` and
    None when it is not found there; ``a prepared record`` without a path)."""
    if path is None:
        return "a prepared record", None
    uri = (shard_uris or {}).get(path, path)
    try:
        lines = (storage or Storage()).read_bytes(uri).decode("utf-8", errors="replace").split("\n")
    except (OSError, ValueError):
        return uri, None
    # Ray Data's read_text splits with str.splitlines: the text may be a whole line or a piece of one.
    number = next((n for n, line in enumerate(lines, 1) if line.rstrip("\r") == text), None)
    number = number or next((n for n, line in enumerate(lines, 1) if text and text in line), None)
    return (f"{uri}:{number}", lines[number - 1].rstrip("\r")) if number else (uri, None)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _snippet(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


@dataclass
class SampleBuilder:
    processor: Any
    template: ChatTemplate
    image_token_count: int
    max_length: int
    image_root: str
    aspect: ImageAspect = ImageAspect.pad
    storage: Storage = field(default_factory=Storage)
    fetch_threads: int = 1

    def __call__(self, batch: dict[str, np.ndarray],
                 shard_uris: Optional[dict[str, str]] = None) -> dict[str, np.ndarray]:
        """``{"text": JSON lines[, "path": shards]}`` → ``input_ids, labels, length, pixel_values, has_image,
        fully_masked, task, id``.

        ``pixel_values`` are resized uint8; :func:`collate` normalises them. A bad line is a JobError naming
        its shard and line (:func:`parse_lines`; ``shard_uris`` maps the ``path`` column to URIs).
        """
        records = parse_lines(batch, self.storage, shard_uris)
        rows = len(records)
        tokenizer = self.processor.tokenizer
        input_ids = np.full((rows, self.max_length), tokenizer.pad_token_id, dtype=np.int32)
        labels = np.full((rows, self.max_length), IGNORE_INDEX, dtype=np.int32)
        lengths = np.zeros(rows, dtype=np.int32)
        fully_masked = np.zeros(rows, dtype=bool)
        for row, record in enumerate(records):
            sample = tokenize_conversation(record["conversations"], tokenizer, self.template,
                                           self.image_token_count, self.max_length)
            n = len(sample.input_ids)
            input_ids[row, :n], labels[row, :n], lengths[row] = sample.input_ids, sample.labels, n
            fully_masked[row] = sample.fully_masked
        has_image = np.array([r.get("image") is not None for r in records], dtype=bool)
        crop = self.processor.image_processor.crop_size
        pixel_values = np.zeros((rows, 3, crop["height"], crop["width"]), dtype=np.uint8)
        if has_image.any():
            uris = [resolve_inside(self.image_root, r["image"]) for r in records if r.get("image") is not None]
            images = self._fetch_images(uris)
            pixel_values[has_image] = resize_images(images, self.processor.image_processor, self.aspect)
        return {"input_ids": input_ids, "labels": labels, "length": lengths, "pixel_values": pixel_values,
                "has_image": has_image, "fully_masked": fully_masked,
                "task": np.array([r.get("task", "") for r in records], dtype=object),
                "id": np.array([r["id"] for r in records], dtype=object)}


    def _fetch_images(self, uris: list[str]) -> list:
        if self.fetch_threads <= 1:
            return [open_rgb(self.storage.read_bytes(uri)) for uri in uris]
        # Worth it when each GET waits tens of milliseconds on a remote store; on a busy CPU it only adds
        # contention (bench/ingest.py: 1 thread is fastest against an endpoint on the same two cores).
        with ThreadPoolExecutor(min(self.fetch_threads, len(uris))) as pool:
            return list(pool.map(lambda uri: open_rgb(self.storage.read_bytes(uri)), uris))


def collate(batch: dict[str, np.ndarray], image_processor,
            device: torch.device | None = None) -> tuple[dict[str, torch.Tensor] | None, int]:
    """Model inputs on ``device`` from a batch of :class:`SampleBuilder` rows, and how many fully masked rows
    were dropped.

    ``image_processor`` supplies the rescale factor, mean and std that turn the uint8 pixels into the
    vision tower's input; that happens after the move, so on a GPU it costs the host nothing.

    Returns ``(None, dropped)`` when every row was fully masked.
    """
    keep = ~batch["fully_masked"]
    dropped = int((~keep).sum())
    if not keep.any():
        return None, dropped
    lengths = torch.from_numpy(batch["length"][keep].astype(np.int64))
    width = int(lengths.max())
    inputs = {
        "input_ids": torch.from_numpy(batch["input_ids"][keep, :width].astype(np.int64)).to(device),
        "labels": torch.from_numpy(batch["labels"][keep, :width].astype(np.int64)).to(device),
        "attention_mask": (torch.arange(width)[None, :] < lengths[:, None]).long().to(device),
    }
    with_image = batch["has_image"][keep]
    if with_image.any():
        pixels = torch.from_numpy(batch["pixel_values"][keep][with_image]).to(device, non_blocking=True)
        inputs["pixel_values"] = normalize_pixels(pixels, image_processor)
    return inputs, dropped
