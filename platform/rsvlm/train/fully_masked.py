"""The fully-masked rule: a run whose samples too often have no supervised token fails, and registers nothing.

A sample is fully masked when every label is ignored: its answer was cut off by ``data.max_length``, or the
data is broken. The share of such samples is judged twice. While training, on at least
:data:`MIN_SAMPLES_FOR_MASK_CHECK` samples, and only when it is above ``data.max_fully_masked_fraction``
beyond doubt (:data:`MASK_CHECK_MARGIN` standard errors of that fraction over the samples seen), so an
unlucky first batch cannot stop a run whose data is fine. At the end of the run, always, exactly, on every
sample it trained on (summed over workers and restarts): a run whose share is above the threshold fails
there, however short, and so never registers its model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

from rsvlm.config.job import JobConfig
from rsvlm.errors import JobError
from rsvlm.strategies.checkpoint import TRAINER_STATE_FILE

MIN_SAMPLES_FOR_MASK_CHECK = 64
MASK_CHECK_MARGIN = 4.0


class FullyMaskedError(JobError):
    """Too many samples had no supervised token (truncated answers or broken data)."""


def check_fully_masked(masked: int, seen: int, job: JobConfig, *, final: bool = False) -> None:
    """Raise :class:`FullyMaskedError` when ``masked`` of ``seen`` samples is too large a share.

    ``final`` (the end of the run): judged exactly, ``masked / seen > data.max_fully_masked_fraction``.
    Otherwise only once ``seen >= MIN_SAMPLES_FOR_MASK_CHECK`` and when the share exceeds the threshold by
    more than ``MASK_CHECK_MARGIN`` standard errors (``sqrt(t (1 - t) / seen)``): early, but never by chance.
    """
    threshold = job.data.max_fully_masked_fraction
    if seen <= 0 or (not final and seen < MIN_SAMPLES_FOR_MASK_CHECK):
        return
    share = masked / seen
    margin = 0.0 if final else MASK_CHECK_MARGIN * math.sqrt(threshold * (1.0 - threshold) / seen)
    if share <= threshold + margin:
        return
    raise fully_masked_error(masked, seen, job, "at the end of the run, over every sample it trained on" if final
                             else f"after {seen} samples, clearly above the threshold; training stopped early")


def fully_masked_error(masked: int, seen: int, job: JobConfig, when: str) -> FullyMaskedError:
    """The one-line error: the share, the threshold, when it was judged, and what to change."""
    return FullyMaskedError(
        f"data.uri={job.data.uri}",
        f"{masked} of {seen} samples ({masked / seen:.1%}) had every label masked, more than "
        f"data.max_fully_masked_fraction={job.data.max_fully_masked_fraction:g} ({when}); no model is registered",
        f"raise data.max_length (now {job.data.max_length}) so the answers fit, or fix the data")


def masked_before(resume_from: Optional[Path]) -> int:
    """The fully masked samples of the run's earlier attempts, as its latest checkpoint recorded them."""
    if resume_from is None:
        return 0
    try:
        return int(json.loads((resume_from / TRAINER_STATE_FILE).read_text()).get("fully_masked_samples", 0))
    except (OSError, ValueError, TypeError):
        return 0
