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

    def __init__(self, total_steps: int, stream: TextIO | None = None):
        self.total_steps = total_steps
        self.stream = stream or sys.stdout
        self.started = time.perf_counter()

    def update(self, step: int, metrics: dict[str, float]) -> None:
        elapsed = time.perf_counter() - self.started
        eta = elapsed / step * (self.total_steps - step) if step else 0.0
        shown = " ".join(f"{key} {value:.4g}" for key, value in metrics.items())
        self.message(f"step {step}/{self.total_steps} ({100 * step // self.total_steps}%) {shown} "
                     f"eta {time.strftime('%H:%M:%S', time.gmtime(eta))}")

    def message(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


class NullProgress:
    """What ranks other than 0 get: says nothing."""

    def update(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def message(self, text: str) -> None:
        pass
