"""The training clock: train.py starts it when set-up is over; the budget is wall time from then on.

The clock only tells train.py how far along it is. The parent process (`autoresearch run`) sees the start
through a marker file and enforces the budget and the hard timeout from outside, so a train.py that
ignores its clock is stopped anyway.
"""

from __future__ import annotations

import json
import os
import time

CLOCK_FILE_ENV = "AUTORESEARCH_CLOCK_FILE"


class TrainingClock:
    def __init__(self, budget: float):
        self.budget = float(budget)
        self._t0: float | None = None

    def start(self) -> "TrainingClock":
        if self._t0 is not None:
            raise RuntimeError("the training clock was already started")
        self._t0 = time.monotonic()
        if path := os.environ.get(CLOCK_FILE_ENV):
            with open(path, "w") as f:
                json.dump({"started_at": time.time(), "pid": os.getpid()}, f)
        return self

    @property
    def started(self) -> bool:
        return self._t0 is not None

    def elapsed(self) -> float:
        return 0.0 if self._t0 is None else time.monotonic() - self._t0

    def progress(self) -> float:
        """Fraction of the budget used, in [0, 1]: what the LR and momentum schedules follow."""
        return min(self.elapsed() / self.budget, 1.0)

    def remaining(self) -> float:
        return max(0.0, self.budget - self.elapsed())

    def done(self) -> bool:
        return self._t0 is not None and self.elapsed() >= self.budget
