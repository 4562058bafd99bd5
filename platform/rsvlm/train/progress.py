"""Progress lines for logs: one plain line per report, no carriage returns (they garble `ray job logs`).

Lines are written to the stream directly: Ray Train V2 patches ``print`` in workers to tee into both its
logger and stdout, which would print every line twice.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressLine:
    """Prints ``step 120/300 (40%) loss 1.234 samples/s 85.2 eta 0:00:21``."""

    def __init__(self, total_steps: int, start_step: int = 0, stream: TextIO | None = None):
        self.total_steps = total_steps
        # A resumed run: the rate (hence the ETA) counts only the steps this process ran.
        self.start_step = start_step
        self.stream = stream or sys.stdout
        self.started = time.perf_counter()

    def update(self, step: int, metrics: dict[str, float]) -> None:
        elapsed = time.perf_counter() - self.started
        done = step - self.start_step
        eta = elapsed / done * (self.total_steps - step) if done > 0 else 0.0
        shown = " ".join(f"{key} {value:.4g}" for key, value in metrics.items())
        self.message(f"step {step}/{self.total_steps} ({100 * step // self.total_steps}%) {shown} "
                     f"eta {format_duration(eta)}")

    def message(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` with hours unbounded (a day-long run's ETA reads ``26:40:00``, not wrapped at 24 h)."""
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


class NullProgress:
    """What ranks other than 0 get: says nothing."""

    def update(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def message(self, text: str) -> None:
        pass
