"""Keep, discard or confirm: the one place that decides, given the candidate's and the frontier's val_bpb.

The metric has a direction (lower is better) and a worst value (a crash is worse than any result), so
the decision is a comparison, not a ladder of special cases. Every decision carries its reason.

Two rules. "strict" keeps any candidate whose mean beats the frontier's (the original autoresearch
behaviour), so about half of all no-op edits get kept on noise alone. "noise" keeps only a gain larger
than run-to-run noise: a one-sided t-test of the difference of means against a measured noise floor. A
gain inside the noise band earns the candidate another run with another seed ("confirm") until it has
max_samples runs; each of those looks is tested at a level chosen so that, all looks together, a no-op
edit is kept at most FALSE_KEEP of the time.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist
from typing import Iterable, Sequence

RULES = ("strict", "noise")
DEFAULT_RULE = "noise"  # what `run` and `loop` use unless told otherwise
VERDICTS = ("keep", "discard", "confirm")
DIRECTIONS = ("minimize", "maximize")
FALSE_KEEP = 0.05  # the noise rule's target: share of no-op edits kept, over all looks at a candidate
MIN_SIGMA = 1e-4  # bpb, absolute (shift-invariant): a measured std of 0 must not make every tiny gain real


@dataclass(frozen=True)
class NoiseFloor:
    std: float  # std of ONE run's val_bpb on unchanged code (pooled estimate)
    dof: int  # degrees of freedom behind that estimate

    def __post_init__(self):
        if not (math.isfinite(self.std) and self.std >= 0) or int(self.dof) != self.dof or self.dof < 1:
            raise ValueError(f"a noise floor needs a finite std >= 0 and dof >= 1, not {self}")


@dataclass(frozen=True)
class Decision:
    verdict: str  # "keep" | "discard" | "confirm" (run the candidate once more with another seed, decide again)
    reason: str  # one sentence with the numbers used

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {self.verdict!r} (known: {', '.join(VERDICTS)})")

    @property
    def keep(self) -> bool:
        return self.verdict == "keep"


def score(val_bpb: float | None) -> float:
    """Lower is better; a missing or non-finite result is the worst possible score."""
    return val_bpb if val_bpb is not None and math.isfinite(val_bpb) else math.inf


def _samples(x: float | Sequence[float] | None) -> list[float]:
    """None, one value or several, as a list of scores (missing and non-finite values become inf)."""
    if x is None:
        return []
    return [score(x)] if isinstance(x, numbers.Real) else [score(v) for v in x]


def _mean(xs: Sequence[float]) -> float:
    return math.fsum(xs) / len(xs)


def pooled_noise(groups: Iterable[Sequence[float]]) -> NoiseFloor | None:
    """Pooled within-group std of repeated val_bpb of the same code, one group per commit; None if no repeats."""
    squares, dof = 0.0, 0
    for group in groups:
        xs = [v for v in _samples(group) if v < math.inf]
        if len(xs) >= 2:
            m = _mean(xs)
            squares += math.fsum((v - m) ** 2 for v in xs)
            dof += len(xs) - 1
    return NoiseFloor(math.sqrt(squares / dof), dof) if dof else None


def _t_cdf(t: float, dof: int) -> float:
    """Student-t CDF for integer dof, by the finite series of Abramowitz & Stegun 26.7.3-4."""
    theta = math.atan(abs(t) / math.sqrt(dof))
    c2 = math.cos(theta) ** 2
    if dof % 2:
        term = total = math.cos(theta) if dof > 1 else 0.0
        for k in range(1, (dof - 1) // 2):
            term *= c2 * 2 * k / (2 * k + 1)
            total += term
        inside = 2 / math.pi * (theta + math.sin(theta) * total)
    else:
        term = total = 1.0
        for k in range(1, dof // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        inside = math.sin(theta) * total
    return 0.5 + math.copysign(inside / 2, t)


@lru_cache(maxsize=256)
def t_quantile(dof: int, q: float = 0.975) -> float:
    """Student-t quantile: the exact CDF inverted by bisection up to 30 dof, the Cornish-Fisher series above."""
    if int(dof) != dof or dof < 1 or not 0 < q < 1:
        raise ValueError(f"t_quantile needs an integer dof >= 1 and 0 < q < 1, not dof={dof}, q={q}")
    if dof > 30:  # A&S 26.7.5; past 30 dof its relative error is below 1e-6
        z, n = NormalDist().inv_cdf(q), dof
        return (z + (z**3 + z) / (4 * n) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * n**2)
                + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * n**3)
                + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * n**4))
    lo, hi = -1.0, 1.0
    while _t_cdf(lo, dof) > q:
        lo *= 2
    while _t_cdf(hi, dof) < q:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf(mid, dof) < q else (lo, mid)
    return (lo + hi) / 2


def look_level(max_samples: int) -> float:
    """One-sided level of each look at a candidate, so that up to max_samples looks together keep a no-op
    edit at most FALSE_KEEP of the time. FALSE_KEEP / k**0.75 sits just under Pocock's repeated-test
    levels (0.0305, 0.0233, 0.0192 for k = 2, 3, 4); Bonferroni (FALSE_KEEP / k) would waste power, as
    successive looks share most of their data."""
    return FALSE_KEEP / max_samples**0.75


def _frontier_text(mean: float, n: int) -> str:
    return f"{mean:.6f}" if n == 1 else f"{mean:.6f} (mean of {n} runs)"


def _strict(cand: list[float], front: list[float], sign: float = 1.0) -> Decision:
    """`cand` and `front` are scores (sign x value: lower is better); reasons show the values."""
    delta = _mean(cand) - _mean(front)
    where = f"the frontier {_frontier_text(sign * _mean(front), len(front))}"
    if delta < 0:
        return Decision("keep", f"strict: improved by {-delta:.6f} over {where}")
    return Decision("discard", f"strict: not better than {where} (delta {sign * delta:+.6f})")


def _noise(cand: list[float], front: list[float], noise: NoiseFloor, max_samples: int, sign: float = 1.0) -> Decision:
    n_c, n_f = len(cand), len(front)
    gain = _mean(front) - _mean(cand)
    sigma = max(noise.std, MIN_SIGMA)
    if gain <= 0:
        where = f"the frontier {_frontier_text(sign * _mean(front), n_f)}"
        return Decision("discard", f"noise: not better than {where} (delta {-sign * gain:+.6f}, "
                                   f"{-gain / sigma:.2f} x sigma {sigma:.6f}, dof {noise.dof})")
    t = t_quantile(noise.dof, 1 - look_level(max_samples))
    band = t * sigma * math.sqrt(1 / n_c + 1 / n_f)
    floor = f" (floor; measured {noise.std:.6f})" if noise.std < MIN_SIGMA else ""
    how = f"t={t:.3f} x sigma {sigma:.6f}{floor} x sqrt(1/{n_c} + 1/{n_f}), dof {noise.dof}"
    if gain > band:
        return Decision("keep", f"noise: improved by {gain:.6f}, beyond the noise band {band:.6f} ({how})")
    if n_c < max_samples:
        return Decision("confirm", f"noise: improved by {gain:.6f}, inside the noise band {band:.6f} "
                                   f"after {n_c} of {max_samples} runs ({how})")
    return Decision("discard", f"noise: improved by {gain:.6f}, inside the noise band {band:.6f} "
                               f"after {n_c} runs ({how})")


def decide(candidate: float | Sequence[float] | None, frontier: float | Sequence[float] | None,
           rule: str = "strict", noise: NoiseFloor | None = None, max_samples: int = 2,
           direction: str = "minimize") -> Decision:
    """Keep, discard or confirm the candidate against the frontier; each is None, one val_bpb or its runs.
    `direction` is the metric's ("maximize": higher is better; the values are compared negated).

    Any candidate run without a valid result discards it (a confirmation run that crashes is a crash);
    frontier runs without one are ignored, and a frontier with none left makes the candidate the baseline.
    """
    if rule not in RULES:
        raise ValueError(f"unknown keep rule {rule!r} (known: {', '.join(RULES)})")
    if max_samples < 1:
        raise ValueError(f"max_samples must be >= 1, not {max_samples}")
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r} (known: {', '.join(DIRECTIONS)})")
    sign = 1.0 if direction == "minimize" else -1.0
    cand = [sign * v if v < math.inf else v for v in _samples(candidate)]
    front = [sign * v for v in _samples(frontier) if v < math.inf]
    failed = sum(v == math.inf for v in cand)
    if not cand or failed == len(cand):
        return Decision("discard", "no valid result")
    if failed:
        return Decision("discard", f"no valid result in {failed} of {len(cand)} runs")
    if not front:  # under either rule: a baseline is compared with nothing, so it needs no noise floor
        return Decision("keep", "baseline: first experiment on this branch")
    if rule == "noise" and noise is None:
        raise ValueError("the noise rule needs a noise floor: repeat runs of unchanged code and pass "
                         "pooled_noise(...) of their val_bpb before deciding with it")
    return _strict(cand, front, sign) if rule == "strict" else _noise(cand, front, noise, max_samples, sign)
