"""Prepared records → fixed-width training arrays, and arrays → model batches.

:class:`SampleBuilder` runs inside Ray Data's ``map_batches`` (CPU, in parallel with training): it decodes
and preprocesses images and tokenizes with label masking. Rows are padded to ``max_length`` so every block
has one fixed schema; :func:`collate` trims each batch back to its longest row.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rsvlm.config.schema import ImageAspect
from rsvlm.data.images import normalize_pixels, open_rgb, resize_images
from rsvlm.data.storage import Storage, resolve_inside
from rsvlm.data.template import IGNORE_INDEX, ChatTemplate, tokenize_conversation


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

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``{"text": JSON lines}`` → ``input_ids, labels, length, pixel_values, has_image, fully_masked, task, id``.

        ``pixel_values`` are resized uint8; :func:`collate` normalises them.
        """
        records = [json.loads(line) for line in batch["text"]]
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
