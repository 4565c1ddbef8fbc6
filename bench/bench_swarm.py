"""The swarm hub's own overhead: experiments per hour with 1, 2, 4, ... N workers, against N x the rate of one.

    python bench/bench_swarm.py                       # 1..64 workers, a 10 s stand-in budget, 6 rounds per point
    python bench/bench_swarm.py --max-workers 8 --budget 5 --rounds 4

Each worker is a stand-in (a Ray actor with the Worker's interface) whose "training" sleeps for the budget
and reports a value near the frontier's, so the figure is what the hub and Ray cost, not the CPU: the real
hub (claims, ledger, git commits, decisions, stale re-applies, test scores) on a real workspace, the real
driver and a local Ray instance. Values are random around the frontier under the strict rule, so about half
of the results are kept and the frontier moves often: the busiest case for the hub (stale candidates are
re-applied, conflicts recorded).

Each point runs N x rounds experiments after the baseline (the time a run takes is the budget, so N
perfect workers need rounds x budget seconds). Printed per point: workers, experiments finished after the
baseline, experiments/hour from the baseline's end to the last result, the ideal (N x the one-worker rate),
their ratio, and the hub's decision latency per result (median and max).
"""

from __future__ import annotations

import argparse
import random
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import machine_info, temp_workspace  # noqa: E402


class StandIn:
    """A worker that proposes a one-line change at once and "trains" by sleeping for the budget."""

    def __init__(self, spec: dict):
        self.name, self.budget = spec["name"], float(spec["files"]["budget"])
        self.rng, self.n = random.Random(spec["seed"]), 0

    def start(self) -> dict:
        return {"name": self.name, "host": socket.gethostname(), "platform": f"stand-in | budget {self.budget:g}s",
                "sandbox": "none", "folder": ""}

    def propose(self, job: dict) -> dict:
        self.n += 1
        line = f"STAND_IN_{self.name.upper()}_{self.n} = {self.rng.random():.6f}\n"
        return {"proposal": {"description": f"stand-in {self.name} #{self.n}", "model": "stand-in"},
                "seconds": 0.0, "files": {"train.py": line + job["files"]["train.py"]}}

    def measure(self, job: dict) -> dict:
        time.sleep(self.budget)
        return {"status": "ok", "val_bpb": 2.0 + self.rng.gauss(0, 0.01), "error_class": "", "error_excerpt": "",
                "log": "stand-in run\n", "worker": self.name}

    def score_test(self, job: dict) -> dict:
        return {"test_bpb": 2.0}

    def observe(self, rows: list[dict]) -> None:
        pass

    def stop(self) -> None:
        pass


def point(workers: int, budget: float, rounds: int) -> dict:
    from autoresearch.ledger import Ledger
    from autoresearch.loop import Limits
    from autoresearch.swarm import driver

    spec = driver.worker_spec

    def with_budget(*args, **kwargs):
        out = spec(*args, **kwargs)
        out["files"]["budget"] = str(budget)
        return out

    driver.worker_spec = with_budget
    try:
        with temp_workspace(budget) as root:
            opts = driver.Options(workers=workers, rule="strict", sandbox="off")
            limits = Limits(max_experiments=1 + workers * rounds)
            _, hub = driver.run_swarm(root, opts, limits, say=lambda line: None, worker_class=StandIn)
            rows = [r for r in Ledger(root, readonly=True).all() if r.finished_at]
    finally:
        driver.worker_spec = spec
    base = min(r.finished_at for r in rows if r.description == "baseline")
    after = [r for r in rows if r.started_at >= base - 1 and r.description != "baseline"]
    span = max(r.finished_at for r in after) - base if after else float("nan")
    lat = sorted(hub.latencies)
    return {"workers": workers, "done": len(after), "per_hour": len(after) / span * 3600 if after else 0.0,
            "latency_ms": statistics.median(lat) * 1000 if lat else float("nan"),
            "latency_max_ms": lat[-1] * 1000 if lat else float("nan"),
            "stale": sum(r.status == "stale" for r in after), "kept": sum(r.status == "keep" for r in after)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-workers", type=int, default=64)
    ap.add_argument("--workers", help="only these worker counts, e.g. 1,64 (the first is the reference rate)")
    ap.add_argument("--budget", type=float, default=10.0, help="seconds each stand-in run sleeps")
    ap.add_argument("--rounds", type=int, default=6, help="experiments per worker at each point")
    args = ap.parse_args()
    print(machine_info())
    print(f"stand-in budget {args.budget:g} s, {args.rounds} rounds per point")
    print(f"{'workers':>7} {'done':>6} {'kept':>5} {'stale':>6} {'exp/h':>9} {'ideal':>9} {'ratio':>6} "
          f"{'latency ms (median/max)':>24}")
    one = None
    counts = [int(x) for x in args.workers.split(",")] if args.workers else \
        [2 ** k for k in range(args.max_workers.bit_length()) if 2 ** k <= args.max_workers]
    for n in counts:
        r = point(n, args.budget, args.rounds)
        one = one or r["per_hour"]
        ideal = n * one
        print(f"{n:>7} {r['done']:>6} {r['kept']:>5} {r['stale']:>6} {r['per_hour']:>9.0f} {ideal:>9.0f} "
              f"{r['per_hour'] / ideal:>6.2f} {r['latency_ms']:>12.1f} / {r['latency_max_ms']:.1f}", flush=True)


if __name__ == "__main__":
    main()
