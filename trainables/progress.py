"""Progress lines from a running trial: steps done, seconds per step and time left, throttled.

Rank 0 of a trial prints one line at most every :data:`MIN_INTERVAL_S` seconds, marked with
:data:`PROGRESS_TAG`; the sweep driver's console (``sweeps/console.py``) recognises the mark and shows the
line to the person watching, while every worker line, these included, also goes to the sweep's worker log.
"""

from __future__ import annotations

import math
import time

#: the mark that starts a progress line in a worker's output
PROGRESS_TAG = "[sam3-progress] "
#: the shortest time between two progress lines of one trial
MIN_INTERVAL_S = 15.0


def format_duration(seconds: float) -> str:
    """``seconds`` as a person reads a time left: ``45 s``, ``12 min``, ``3.4 h``."""
    if not math.isfinite(seconds):
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class ProgressPrinter:
    """Told after every training step of rank 0 (its step and the pace of the steps since the last validation,
    validations excluded); prints a progress line when :data:`MIN_INTERVAL_S` has passed since the last one:
    ``[sam3-progress] <label> step 40/400, 0.62 s/step, ~3.7 min left``. The time left counts training steps
    only (the validation lines count the validations)."""

    def __init__(self, label: str, max_steps: int, min_interval_s: float = MIN_INTERVAL_S) -> None:
        self.label, self.max_steps, self.min_interval_s = label, max_steps, min_interval_s
        self.last_time: float | None = None

    def __call__(self, step: int, seconds_per_step: float) -> None:
        now = time.monotonic()
        if self.last_time is None:  # the first step starts the clock (model build and data are not steps)
            self.last_time = now
            return
        if now - self.last_time < self.min_interval_s:
            return
        print(f"{PROGRESS_TAG}{self.label} step {step}/{self.max_steps}, {seconds_per_step:.2f} s/step, "
              f"~{format_duration(seconds_per_step * (self.max_steps - step))} left", flush=True)
        self.last_time = now
