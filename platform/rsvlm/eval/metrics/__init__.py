"""Pure metric functions (no I/O, no torch) for the remote-sensing benchmarks.

- :mod:`.answers`: answer normalisation and single-choice letter extraction.
- :mod:`.vqa`: exact-match VQA accuracy (OA / AA), single-choice and circular accuracy.
- :mod:`.geometry`: IoU of possibly rotated boxes.
- :mod:`.grounding`: accuracy@IoU for referring / grounding answers.
- :mod:`.captions`: BLEU-1..4, METEOR, ROUGE_L, CIDEr (and SPICE where possible) by the COCO caption toolkit
  (pycocoevalcap; runs Java subprocesses, see its docstring).
- :mod:`.fitrsfg` (with :mod:`.fitrsfg_parse`, :mod:`.detection`, :mod:`.scene_graph`): FIT-RSFG scene
  classification, VQA and complex comprehension task1–task6, each in ``reference`` and ``strict`` mode.
"""

from __future__ import annotations

from .answers import extract_choice, normalize_answer
from .captions import CaptionToolkitError, CaptionToolkitUnavailable, caption_scores
from .geometry import box_iou
from .grounding import box_matching_accuracy, grounding_accuracy
from .vqa import choice_accuracy, circular_eval, vqa_accuracy

# FIT-RSFG (kept apart from the list above so concurrent edits do not collide).
from .detection import average_precision, rotated_map
from .fitrsfg import (
    complex_comprehension_metrics,
    fitrsfg_vqa_accuracy,
    relation_prf,
    relation_reasoning_prf,
    scene_classification_metrics,
)
from .scene_graph import scene_graph_recall

__all__ = [
    "CaptionToolkitError",
    "CaptionToolkitUnavailable",
    "box_iou",
    "box_matching_accuracy",
    "caption_scores",
    "choice_accuracy",
    "circular_eval",
    "extract_choice",
    "grounding_accuracy",
    "normalize_answer",
    "vqa_accuracy",
]
__all__ += [
    "average_precision",
    "complex_comprehension_metrics",
    "fitrsfg_vqa_accuracy",
    "relation_prf",
    "relation_reasoning_prf",
    "rotated_map",
    "scene_classification_metrics",
    "scene_graph_recall",
]
