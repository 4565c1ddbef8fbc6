"""The keep rules as properties (hypothesis) and as the two-stage procedure the engine runs (Monte Carlo)."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from hypothesis import given, strategies as st

from autoresearch.selection import (MIN_SIGMA, RULES, NoiseFloor, decide, look_level, pooled_noise,
                                    t_quantile)

bpb = st.floats(min_value=0.5, max_value=3.0)
candidates = st.lists(bpb, min_size=1, max_size=2)
frontiers = st.lists(bpb, min_size=1, max_size=8)
floors = st.builds(NoiseFloor, std=st.floats(min_value=0.0, max_value=0.05), dof=st.integers(1, 500))
looks = st.integers(1, 4)


def mean(xs):
    return math.fsum(xs) / len(xs)


@given(candidates, frontiers)
def test_strict_keeps_iff_the_mean_is_lower(cand, front):
    decision = decide(cand, front)
    assert decision.verdict in ("keep", "discard")
    assert decision.keep == (mean(cand) < mean(front))
    assert decision.reason.startswith("strict: ")


@given(candidates, frontiers, floors, looks)
def test_noise_keeps_only_what_strict_keeps(cand, front, noise, max_samples):
    decision = decide(cand, front, "noise", noise, max_samples)
    if decision.verdict != "discard":  # keep or confirm: better, never worse or equal
        assert mean(cand) < mean(front) and decide(cand, front).keep
    if mean(cand) >= mean(front):
        assert decision.verdict == "discard" and "not better" in decision.reason
    assert f"dof {noise.dof}" in decision.reason and "sigma" in decision.reason  # every verdict shows its floor


@given(candidates, frontiers, floors, looks)
def test_confirm_only_below_max_samples(cand, front, noise, max_samples):
    decision = decide(cand, front, "noise", noise, max_samples)
    if decision.verdict == "confirm":
        assert len(cand) < max_samples and f"after {len(cand)} of {max_samples} runs" in decision.reason
    if len(cand) >= max_samples:
        assert decision.verdict != "confirm"


def runs_on_a_grid(sizes):
    """Values k / 2**20 near 1.5, in groups of 1, 2, 4 or 8: means and differences are exact in floating
    point, shifted or not, so the invariance holds bit for bit and needs no tolerance."""
    value = st.integers(-(2**18), 2**18).map(lambda k: 1.5 + k / 2**20)
    return st.sampled_from(sizes).flatmap(lambda n: st.lists(value, min_size=n, max_size=n))


@given(runs_on_a_grid([1, 2]), runs_on_a_grid([1, 2, 4, 8]), st.integers(-(2**19), 2**19), floors, looks,
       st.sampled_from(RULES))
def test_invariant_to_a_common_shift(cand, front, k, noise, max_samples, rule):
    shift = k / 2**20
    moved = decide([v + shift for v in cand], [v + shift for v in front], rule, noise, max_samples)
    assert moved.verdict == decide(cand, front, rule, noise, max_samples).verdict


@pytest.mark.parametrize("rule", RULES)
@given(cand=bpb, noise=floors)
def test_baseline(rule, cand, noise):
    for front in (None, [], [math.nan], [math.inf, None]):
        decision = decide(cand, front, rule, noise)
        assert decision.keep and decision.reason == "baseline: first experiment on this branch"


@pytest.mark.parametrize("rule", RULES)
@given(front=st.one_of(st.none(), bpb, frontiers), noise=floors)
def test_invalid_candidate_is_discarded(rule, front, noise):
    for cand in (None, [], math.nan, math.inf, -math.inf, [math.nan, None]):
        assert decide(cand, front, rule, noise).reason == "no valid result"
    for cand in ([1.0, math.nan], [math.inf, 1.0]):  # a crashed confirmation run is a crash
        decision = decide(cand, front, rule, noise)
        assert decision.verdict == "discard" and decision.reason == "no valid result in 1 of 2 runs"


def test_reasons_name_the_numbers():
    assert decide(1.233333, 1.234567).reason == "strict: improved by 0.001234 over the frontier 1.234567"
    assert decide(1.234667, [1.234567]).reason == \
        "strict: not better than the frontier 1.234567 (delta +0.000100)"
    assert "(mean of 2 runs)" in decide(1.3, [1.2, 1.22]).reason
    noise = NoiseFloor(0.007, 4)
    keep = decide(1.80, [1.85] * 5, "noise", noise)
    assert keep.keep and "0.050000" in keep.reason and "sigma 0.007000" in keep.reason and "1/5" in keep.reason
    assert decide(1.845, [1.85] * 5, "noise", noise).verdict == "confirm"
    last = decide([1.845, 1.846], [1.85] * 5, "noise", noise)
    assert last.verdict == "discard" and "after 2 runs" in last.reason


def test_zero_noise_falls_back_to_the_floor():
    """A std of 0 (identical repeats) must not make a 1e-6 gain significant; a clear gain is still kept."""
    zero = NoiseFloor(0.0, 10)
    assert decide([1.849999, 1.849999], [1.85, 1.85], "noise", zero).verdict == "discard"
    decision = decide(1.849, [1.85, 1.85], "noise", zero)
    assert decision.keep and "floor; measured 0.000000" in decision.reason and MIN_SIGMA == 1e-4


def test_misuse_is_loud():
    with pytest.raises(ValueError, match="noise floor"):
        decide(1.8, 1.9, "noise")
    with pytest.raises(ValueError, match="strict, noise"):
        decide(1.8, 1.9, "lucky")
    with pytest.raises(ValueError):
        decide(1.8, 1.9, "noise", NoiseFloor(0.01, 3), max_samples=0)
    for bad in ((-1.0, 3), (math.nan, 3), (0.01, 0)):
        with pytest.raises(ValueError):
            NoiseFloor(*bad)
    for dof, q in ((0, 0.975), (2.5, 0.975), (3, 1.0), (3, 0.0)):
        with pytest.raises(ValueError):
            t_quantile(dof, q)


@given(st.lists(st.lists(st.floats(-5, 5), max_size=6), max_size=6))
def test_pooled_noise(groups):
    noise = pooled_noise(groups)
    dof = sum(len(g) - 1 for g in groups if len(g) >= 2)
    if dof == 0:
        assert noise is None
        return
    assert noise.dof == dof
    with_junk = pooled_noise([*groups, [], [1.0], [2.0, math.nan], [math.inf, None]])
    assert with_junk == noise  # groups with < 2 valid values add nothing
    moved = pooled_noise([[v + i for v in g] for i, g in enumerate(groups)])
    assert moved.std == pytest.approx(noise.std, rel=1e-6, abs=1e-9)  # each group's own mean is removed
    if len(groups) == 1:
        assert noise.std == pytest.approx(statistics.stdev(groups[0]), rel=1e-9, abs=1e-12)


def test_pooled_noise_pools_variances():
    noise = pooled_noise([[1.0, 3.0], [10.0, 10.0, 16.0]])  # squares 2 + 24 over 1 + 2 dof
    assert noise == NoiseFloor(math.sqrt(26 / 3), 3)


@pytest.mark.parametrize("q, known", [(0.975, {1: 12.706, 2: 4.303, 4: 2.776, 10: 2.228, 30: 2.042, 60: 2.000,
                                               120: 1.980}),
                                      (0.95, {1: 6.314, 4: 2.132, 10: 1.812, 30: 1.697, 120: 1.658})])
def test_t_quantile_matches_the_tables(q, known):
    for dof, value in known.items():
        assert t_quantile(dof, q) == pytest.approx(value, abs=6e-4)
    assert t_quantile(10**6, q) == pytest.approx(1.959964 if q == 0.975 else 1.644854, abs=1e-5)


@given(st.integers(1, 2000), st.sampled_from([0.95, 0.975, 1 - look_level(2), 1 - look_level(3)]))
def test_t_quantile_decreases_towards_the_normal(dof, q):
    assert t_quantile(dof, q) > t_quantile(dof + 1, q) > statistics.NormalDist().inv_cdf(q)
    assert t_quantile(dof, 1 - q) == pytest.approx(-t_quantile(dof, q))


def two_stage(front: np.ndarray, cand: np.ndarray, rule: str) -> float:
    """Share kept when the engine decides on one run and, on "confirm", on two; noise from the frontier runs."""
    kept = 0
    for f, c in zip(front.tolist(), cand.tolist()):
        noise = pooled_noise([f])
        decision = decide(c[:1], f, rule, noise)
        if decision.verdict == "confirm":
            decision = decide(c, f, rule, noise)
        kept += decision.keep
    return kept / len(front)


def test_two_stage_monte_carlo():
    """m = 5 frontier runs of N(1.85, 0.007) (the measured cpu noise), dof 4: null edits are kept <= 5% of
    the time by the noise rule (about half by strict), an edit 3 sigma better is kept >= 80%."""
    rng, trials, m, mu, sigma = np.random.default_rng(20240601), 20000, 5, 1.85, 0.007
    front = rng.normal(mu, sigma, (trials, m))
    null = rng.normal(mu, sigma, (trials, 2))
    better = rng.normal(mu - 3 * sigma, sigma, (trials, 2))
    figures = {"strict null": two_stage(front, null, "strict"), "noise null": two_stage(front, null, "noise"),
               "noise 3 sigma": two_stage(front, better, "noise")}
    print(f"two-stage, m=5, {trials} trials:", {k: f"{v:.1%}" for k, v in figures.items()})
    assert figures["noise null"] <= 0.05, figures
    assert figures["strict null"] >= 0.4, figures
    assert figures["noise 3 sigma"] >= 0.80, figures
