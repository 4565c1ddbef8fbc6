"""Keep or discard: the one place that decides, given the candidate's and the frontier's val_bpb.

The metric has a direction (lower is better) and a worst value (a crash is worse than any result), so
the decision is a comparison, not a ladder of special cases. Every decision carries its reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

RULES = ("strict",)


@dataclass(frozen=True)
class Decision:
    keep: bool
    reason: str


def score(val_bpb: float | None) -> float:
    """Lower is better; a missing or non-finite result is the worst possible score."""
    return val_bpb if val_bpb is not None and math.isfinite(val_bpb) else math.inf


def decide(candidate: float | None, frontier: float | None, rule: str = "strict") -> Decision:
    if rule not in RULES:
        raise ValueError(f"unknown keep rule {rule!r} (known: {', '.join(RULES)})")
    if score(candidate) == math.inf:
        return Decision(False, "no valid result")
    if frontier is None:
        return Decision(True, "baseline: first experiment on this branch")
    delta = score(candidate) - score(frontier)
    if delta < 0:
        return Decision(True, f"strict: improved by {-delta:.6f} over the frontier {frontier:.6f}")
    return Decision(False, f"strict: not better than the frontier {frontier:.6f} (delta {delta:+.6f})")
