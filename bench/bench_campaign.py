"""A campaign, side by side: the default loop against random search, re-measured with fresh seeds.

    python bench/bench_campaign.py --experiments 60 --repeats 3            # the cpu profile's default budget
    python bench/bench_campaign.py --experiments 3 --budget 5 --repeats 1  # a smoke run (minutes)

On the cpu profile, each strategy gets a fresh workspace (same profile, same budget, same seeds) and runs
sequentially on this machine:
  loop          the default `autoresearch loop`: the offline optuna agent with the noise rule
  random        random search over the same constants and ranges (the optuna agent's search space, the same
                rules of what can run) with the strict rule: the original's keep-any-improvement
  optuna-strict (optional, --strategies) the offline agent with the strict rule: the search without the rule
Each campaign is `--experiments` experiments, the baseline included. Then every kept commit (the baseline,
the frontier and those between) is trained again `--repeats` times with fresh seeds (1000, 1001, ...), by the
harness's own code path (trial.measure), so the table shows the real gain of the frontier over the baseline
and how many kept results were false: not better than the baseline beyond noise (2 standard errors of the
difference) on re-measure. Printed: the table; written: a plot of the best-so-far (the frontier's recorded
val_bpb) per experiment, every strategy on one axis (--out, default a temporary folder).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_info  # noqa: E402

from autoresearch import agents, sandbox, selection  # noqa: E402
from autoresearch.agents.base import Proposal  # noqa: E402
from autoresearch.agents.optuna_search import (  # noqa: E402
    _rounded, describe, infeasible, read_constants, space_of, write_constants,
)
from autoresearch.git import git  # noqa: E402
from autoresearch.guard import Session  # noqa: E402
from autoresearch.harness.prepare import load_manifest, prepare  # noqa: E402
from autoresearch.harness.profiles import get_profile  # noqa: E402
from autoresearch.harness.settings import Settings  # noqa: E402
from autoresearch.ledger import Ledger  # noqa: E402
from autoresearch.loop import Limits, run_loop  # noqa: E402
from autoresearch.recovery import Journal  # noqa: E402
from autoresearch.trial import measure  # noqa: E402
from autoresearch.workspace import init_workspace, pin_data  # noqa: E402

STRATEGIES = {"loop": ("optuna", "noise"), "random": ("random", "strict"), "optuna-strict": ("optuna", "strict")}
FRESH_SEED = 1000
SEARCH_SEED = 0


class RandomAgent:
    """Random search: every constant of the optuna agent's space drawn from its whole range, rejecting (and
    drawing again) what the optuna agent would refuse as unable to run."""

    name = "random"

    def __init__(self, workspace: Path, model: str | None = None, base_url: str | None = None, seed: int | None = None):
        self.root = Path(workspace)
        self.space = space_of((self.root / "train.py").read_text())
        self.rng = random.Random(SEARCH_SEED)
        self.seq = Settings.load(self.root).profile.max_seq_len

    def check(self) -> None:
        pass

    def draw(self, spec: dict):
        kind = spec["kind"]
        if kind == "log":
            return math.exp(self.rng.uniform(math.log(spec["low"]), math.log(spec["high"])))
        if kind == "uniform":
            return self.rng.uniform(spec["low"], spec["high"])
        if kind == "int":
            return self.rng.randint(spec["low"], spec["high"])
        return self.rng.choice(spec["choices"])

    def propose(self, context) -> Proposal:
        current = read_constants(context.train_py)
        for _ in range(1000):
            values = {name: _rounded(spec, self.draw(spec)) for name, spec in self.space.items()}
            if infeasible({**current, **values}, self.seq) is None:
                break
        changes = {k: v for k, v in values.items() if current.get(k) != v}
        return Proposal(description="random: " + (describe(current, changes, self.space) or "no change"),
                        train_py=write_constants(context.train_py, changes), model="random")

    def observe(self, experiment) -> None:
        pass


def workspace(tmp: Path, name: str, budget: float | None) -> Settings:
    settings = init_workspace(tmp / name, "cpu", budget=budget, tag="campaign")
    pin_data(settings, load_manifest(settings.profile))
    settings = Settings.load(tmp / name)
    return settings


def campaign(tmp: Path, name: str, args) -> dict:
    agent, rule = STRATEGIES[name]
    settings = workspace(tmp, name, args.budget)
    root = settings.root
    t0 = time.time()
    run_loop(root, agent, Limits(max_experiments=args.experiments), rule=rule, noise_runs=args.noise_runs)
    hours = (time.time() - t0) / 3600
    ledger = Ledger(root)
    rows = ledger.all("autoresearch/campaign")
    best, curve = None, []
    for e in rows:
        if e.status == "keep":
            best = e.val_bpb
        curve.append(best)
    kept = [e for e in rows if e.status == "keep"]

    # re-measure every kept commit with fresh seeds, by the harness's own code path
    session = Session(settings, ledger, sandbox.resolve(None), "autoresearch/campaign")
    journal, frontier_text = Journal(root), (root / "train.py").read_text()
    again = {}
    for e in kept:
        text = git(root, "show", f"{e.commit}:train.py")
        (root / "train.py").write_text(text)
        values = []
        for i in range(args.repeats):
            tag = f"re{e.id:04d}-{i}"
            s = measure(session, root / "runs" / tag, root / "runs" / f"{tag}.log", journal, FRESH_SEED + i)
            values.append(s.val_bpb if s.status == "ok" else math.inf)
        again[e.id] = values
    (root / "train.py").write_text(frontier_text)
    git(root, "checkout", "--", "train.py", check=False)
    return {"name": name, "agent": agent, "rule": rule, "rows": rows, "curve": curve, "kept": kept, "again": again,
            "hours": hours}


def summarise(result: dict) -> dict:
    kept, again = result["kept"], result["again"]
    base, front = again[kept[0].id], again[kept[-1].id]
    floor = selection.pooled_noise(list(again.values()))
    std = floor.std if floor else None
    mean = lambda xs: statistics.fmean(xs) if xs and all(math.isfinite(x) for x in xs) else math.inf  # noqa: E731
    gain = mean(base) - mean(front)
    margin = 2 * std * math.sqrt(2 / len(base)) if std is not None else 0.0
    false = sum(1 for e in kept[1:] if not mean(base) - mean(again[e.id]) > margin)
    return {"experiments": len(result["rows"]), "kept": len(kept) - 1, "recorded": kept[-1].val_bpb,
            "base": mean(base), "front": mean(front), "gain": gain, "std": std,
            "sigmas": gain / std if std else None, "false": false, "hours": result["hours"]}


def table(results: list[dict]) -> str:
    head = (f"{'strategy':14s} {'rule':6s} {'exps':>4s} {'kept':>4s} {'frontier':>9s} {'re-frontier':>11s} "
            f"{'re-baseline':>11s} {'real gain':>9s} {'noise sd':>8s} {'gain/sd':>7s} {'false':>5s} {'exp/h':>6s}")
    lines = [head]
    for r in results:
        s = summarise(r)
        sd = f"{s['std']:.4f}" if s["std"] is not None else "-"
        sig = f"{s['sigmas']:+.1f}" if s["sigmas"] is not None else "-"
        rate = s["experiments"] / s["hours"] if s["hours"] else 0.0
        lines.append(f"{r['name']:14s} {r['rule']:6s} {s['experiments']:4d} {s['kept']:4d} {s['recorded']:9.4f} "
                     f"{s['front']:11.4f} {s['base']:11.4f} {s['gain']:+9.4f} {sd:>8s} {sig:>7s} {s['false']:5d} "
                     f"{rate:6.1f}")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in results:
        xs = [i + 1 for i, v in enumerate(r["curve"]) if v is not None]
        ax.step(xs, [v for v in r["curve"] if v is not None], where="post", label=f"{r['name']} ({r['rule']} rule)")
    ax.set_xlabel("experiment")
    ax.set_ylabel("best val_bpb so far (the frontier, as recorded)")
    ax.set_title("campaign: best-so-far per experiment")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiments", type=int, default=60, help="experiments per strategy, the baseline included")
    ap.add_argument("--budget", type=float, default=None, help="training seconds (default: the cpu profile's)")
    ap.add_argument("--repeats", type=int, default=3, help="fresh-seed re-measures of each kept commit")
    ap.add_argument("--noise-runs", type=int, default=4, help="repeats of the frontier behind the noise floor")
    ap.add_argument("--strategies", default="loop,random", help=f"comma-separated, of {', '.join(STRATEGIES)}")
    ap.add_argument("--out", type=Path, default=None, help="folder for the plot and the workspaces")
    args = ap.parse_args()
    names = [n.strip() for n in args.strategies.split(",") if n.strip()]
    if unknown := [n for n in names if n not in STRATEGIES]:
        ap.error(f"unknown strategies {unknown} (known: {', '.join(STRATEGIES)})")
    agents.REGISTRY["random"] = "bench_campaign:RandomAgent"

    out = args.out or Path(tempfile.mkdtemp(prefix="bench-campaign-"))
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("AUTORESEARCH_CACHE", str(Path.home() / ".cache" / "autoresearch"))
    prepare(get_profile("cpu"), progress=False)
    budget = args.budget if args.budget is not None else get_profile("cpu").time_budget
    print(machine_info())
    print(f"campaign: {args.experiments} experiments per strategy, budget {budget:g}s, {args.repeats} re-measures "
          f"of each kept commit; workspaces in {out}", flush=True)
    results = []
    for name in names:
        print(f"\n== {name} ==", flush=True)
        results.append(campaign(out, name, args))
    print("\n" + table(results))
    plot(results, out / "campaign.png")
    print(f"\nplot: {out / 'campaign.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
