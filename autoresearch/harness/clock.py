"""Time: the rules a run is held to, and the training clock train.py reads.

Every rule counts from one moment, the launch of train.py, on the parent's own monotonic clock:

    launch ──start-up allowance──▶ ──budget──▶ training ends ──export allowance──▶ deadline ──exit grace──▶
                                                                                   the model     train.py
                                                                                   must exist    must have exited

Nothing train.py writes moves any of these points. Set-up it does before `start_clock()` and work after the
training window is time it takes from training: a train.py that starts its clock early trains longer, one
that trains before its clock or after `submit()` gains nothing (its model must still be on disk by the same
deadline). The start-up and export allowances are the same for every candidate; they are the only slack.

The clock only tells train.py how far along it is. Under the harness its window ends at the launch-fixed
point (the parent passes it in the environment); run by hand, it ends `budget` seconds after `start()`.
The parent enforces the deadline from outside, so a train.py that ignores or patches its clock is stopped
anyway. `start()` writes a marker file that the harness reads for information only (start-up seconds).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

CLOCK_FILE_ENV = "AUTORESEARCH_CLOCK_FILE"
TRAINING_ENDS_ENV = "AUTORESEARCH_TRAINING_ENDS"  # time.monotonic() at which the training window closes
EXIT_GRACE = 10.0          # the model is on disk: train.py has this long to exit, then it is stopped
MIN_EVAL_TIMEOUT = 300.0


@dataclass(frozen=True)
class TimeRules:
    """Every time rule of one run, in seconds; the points are counted from launch."""
    budget: float          # training
    startup: float         # the set-up allowance: the training window closes at startup + budget
    export: float          # the window closed -> the exported model on disk
    exit_grace: float      # the exported model on disk -> train.py has exited
    eval_timeout: float    # the evaluator process, start to result

    @classmethod
    def of(cls, profile) -> "TimeRules":
        return cls(budget=profile.time_budget, startup=profile.startup_allowance, export=profile.export_allowance,
                   exit_grace=EXIT_GRACE, eval_timeout=max(MIN_EVAL_TIMEOUT, 2.0 * profile.time_budget))

    @property
    def training_ends(self) -> float:
        """When train.py's clock says stop."""
        return self.startup + self.budget

    @property
    def deadline(self) -> float:
        """When the exported model must exist; past it train.py is stopped and the run is `invalid`."""
        return self.startup + self.budget + self.export

    @property
    def hard_timeout(self) -> float:
        """When train.py must have exited, whatever happened; past it the run is a `timeout`."""
        return self.deadline + self.exit_grace


class TrainingClock:
    def __init__(self, budget: float, ends_at: float | None = None):
        """`ends_at`: time.monotonic() at which the window closes (default: the harness's, from the
        environment; without the harness, `budget` seconds after `start()`)."""
        self.budget = float(budget)
        if ends_at is None and (env := os.environ.get(TRAINING_ENDS_ENV)):
            ends_at = float(env)
        self._ends_at = ends_at
        self._t0: float | None = None
        self._t1: float | None = None

    def start(self) -> "TrainingClock":
        if self._t0 is not None:
            raise RuntimeError("the training clock was already started")
        self._t0 = time.monotonic()
        self._t1 = self._ends_at if self._ends_at is not None else self._t0 + self.budget
        if path := os.environ.get(CLOCK_FILE_ENV):
            with open(path, "w") as f:
                json.dump({"started_at": time.time(), "pid": os.getpid()}, f)
        return self

    @property
    def started(self) -> bool:
        return self._t0 is not None

    def window(self) -> float:
        """Seconds from the start to the end of training: the budget plus whatever start-up allowance
        set-up left unused (0 when set-up overran it)."""
        return 0.0 if self._t0 is None else max(0.0, self._t1 - self._t0)

    def elapsed(self) -> float:
        return 0.0 if self._t0 is None else time.monotonic() - self._t0

    def progress(self) -> float:
        """Fraction of the window used, in [0, 1]: what the LR and momentum schedules follow."""
        if self._t0 is None:
            return 0.0
        window = self.window()
        return min(self.elapsed() / window, 1.0) if window > 0 else 1.0

    def remaining(self) -> float:
        return 0.0 if self._t0 is None else max(0.0, self._t1 - time.monotonic())

    def closes_in(self) -> float | None:
        """Seconds until the training window closes, also before `start()` under the harness (what set-up
        such as compilation would take from training); None before `start()` when run by hand."""
        if self._t0 is not None:
            return self.remaining()
        return None if self._ends_at is None else max(0.0, self._ends_at - time.monotonic())

    def done(self) -> bool:
        return self._t0 is not None and time.monotonic() >= self._t1
