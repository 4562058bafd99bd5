"""Pure metric functions (no I/O, no torch) for the remote-sensing benchmarks.

- :mod:`.answers`: answer normalisation and single-choice letter extraction.
- :mod:`.vqa`: exact-match VQA accuracy (OA / AA), single-choice and circular accuracy.
- :mod:`.geometry`: IoU of possibly rotated boxes.
- :mod:`.grounding`: accuracy@IoU for referring / grounding answers.
"""

from __future__ import annotations

from .answers import extract_choice, normalize_answer
from .geometry import box_iou
from .grounding import grounding_accuracy
from .vqa import choice_accuracy, circular_accuracy, vqa_accuracy

__all__ = [
    "box_iou",
    "choice_accuracy",
    "circular_accuracy",
    "extract_choice",
    "grounding_accuracy",
    "normalize_answer",
    "vqa_accuracy",
]
