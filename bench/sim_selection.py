"""The keep rules under simulated noise: how often each keeps a no-op edit, and how often it keeps a real gain.

Run (from the repository root):

    python bench/sim_selection.py
    python bench/sim_selection.py --trials 20000 --sigma 0.007 --seed 1

Each trial is one candidate decided as the engine does: the frontier has m runs of N(mu, sigma), the noise
floor is estimated from those m runs (dof m - 1), the candidate gets one run of N(mu - effect * sigma, sigma)
and, when the rule answers "confirm", a second one, and `autoresearch.selection.decide` is called again.
Prints, for m = 3, 5, 8 and both rules, the share of candidates kept for effect 0 (a no-op edit: the
false-keep rate) and 1, 2, 3, 4 sigma (the detection rate), and the mean number of runs per candidate.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from autoresearch.selection import RULES, decide, pooled_noise  # noqa: E402

EFFECTS = (0, 1, 2, 3, 4)


def simulate(rng: np.random.Generator, trials: int, m: int, effect: float, rule: str, mu: float,
             sigma: float) -> tuple[float, float]:
    """(share kept, mean runs per candidate) over `trials` two-stage decisions."""
    front = rng.normal(mu, sigma, (trials, m)).tolist()
    cand = rng.normal(mu - effect * sigma, sigma, (trials, 2)).tolist()
    kept = runs = 0
    for f, c in zip(front, cand):
        noise = pooled_noise([f])
        decision, n = decide(c[:1], f, rule, noise), 1
        if decision.verdict == "confirm":
            decision, n = decide(c, f, rule, noise), 2
        kept, runs = kept + decision.keep, runs + n
    return kept / trials, runs / trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4000)
    parser.add_argument("--mu", type=float, default=1.85)
    parser.add_argument("--sigma", type=float, default=0.007, help="noise of one run (measured on cpu: 0.007)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"share kept, {args.trials} trials per cell, one run + one confirmation, mu {args.mu}, sigma {args.sigma}")
    print(f"{'m':>2} {'rule':<6} " + " ".join(f"{f'{e} sigma':>8}" for e in EFFECTS) + "  runs/null")
    for m in (3, 5, 8):
        for rule in RULES:
            cells = [simulate(rng, args.trials, m, e, rule, args.mu, args.sigma) for e in EFFECTS]
            print(f"{m:>2} {rule:<6} " + " ".join(f"{kept:>8.1%}" for kept, _ in cells) + f"  {cells[0][1]:>9.2f}")
    print("0 sigma = false-keep rate of a no-op edit (goal for noise: <= 5%); others = detection rate")


if __name__ == "__main__":
    main()
