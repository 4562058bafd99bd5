"""Prepared records → fixed-width training arrays, and arrays → model batches.

:class:`SampleBuilder` runs inside Ray Data's ``map_batches`` (CPU, in parallel with training): it decodes
and preprocesses images and tokenizes with label masking. Rows are padded to ``max_length`` so every block
has one fixed schema; :func:`collate` trims each batch back to its longest row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rsvlm.config.schema import ImageAspect
from rsvlm.data.images import open_rgb, preprocess_images
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

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``{"text": JSON lines}`` → ``input_ids, labels, length, pixel_values, has_image, fully_masked, task``."""
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
        pixel_values = np.zeros((rows, 3, crop["height"], crop["width"]), dtype=np.float32)
        if has_image.any():
            images = [open_rgb(self.storage.read_bytes(resolve_inside(self.image_root, r["image"])))
                      for r in records if r.get("image") is not None]
            pixel_values[has_image] = preprocess_images(images, self.processor.image_processor, self.aspect)
        return {"input_ids": input_ids, "labels": labels, "length": lengths, "pixel_values": pixel_values,
                "has_image": has_image, "fully_masked": fully_masked,
                "task": np.array([r.get("task", "") for r in records], dtype=object)}


def collate(batch: dict[str, np.ndarray]) -> tuple[dict[str, torch.Tensor] | None, int]:
    """Model inputs from a batch of :class:`SampleBuilder` rows, and how many fully masked rows were dropped.

    Returns ``(None, dropped)`` when every row was fully masked.
    """
    keep = ~batch["fully_masked"]
    dropped = int((~keep).sum())
    if not keep.any():
        return None, dropped
    lengths = torch.from_numpy(batch["length"][keep].astype(np.int64))
    width = int(lengths.max())
    inputs = {
        "input_ids": torch.from_numpy(batch["input_ids"][keep, :width].astype(np.int64)),
        "labels": torch.from_numpy(batch["labels"][keep, :width].astype(np.int64)),
        "attention_mask": (torch.arange(width)[None, :] < lengths[:, None]).long(),
    }
    with_image = batch["has_image"][keep]
    if with_image.any():
        inputs["pixel_values"] = torch.from_numpy(batch["pixel_values"][keep][with_image])
    return inputs, dropped
