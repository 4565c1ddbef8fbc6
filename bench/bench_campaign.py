"""A campaign, side by side: the default loop against random search, re-measured with fresh seeds.

    python bench/bench_campaign.py --experiments 60 --repeats 3 --parallel --out ~/campaign  # the cpu profile's budget
    python bench/bench_campaign.py --experiments 3 --budget 5 --repeats 1                    # a smoke run (minutes)

On the cpu profile, each strategy gets a fresh workspace (same profile, same budget, same seeds):
  loop          the default `autoresearch loop`: the offline optuna agent with the noise rule
  random        random search over the same constants and ranges (the optuna agent's search space, the same
                rules of what can run) with the strict rule: the original's keep-any-improvement
  optuna-strict (optional, --strategies) the offline agent with the strict rule: the search without the rule
By default the strategies run one after the other on the whole machine. With --parallel they run at the same
time, each pinned to its own share of the CPUs (one core each on a 2-core machine), so both see the same
machine at the same moments; each then trains with fewer threads than a lone run would.

Each campaign is `--experiments` experiments, the baseline included. Then the baseline and the frontier are
trained again `--repeats` times with fresh seeds (1000, 1001, ...) and every kept commit between them
`--repeats-kept` times, by the harness's own code path (trial.measure), so the table shows the real gain of
the frontier over the baseline and how many kept results were false: not better than the baseline beyond
noise (2 standard errors of the difference, from the pooled noise of the re-measures) on re-measure.
Printed: the table; written: a plot of the best-so-far (the frontier's recorded val_bpb) per experiment,
every strategy on one axis (--out, default a temporary folder).

Resumable: run the same command with the same --out again after an interrupt (Ctrl-C, a reboot) and each
strategy goes on from its ledger (the loop resumes; re-measures already made are kept in
OUT/NAME.remeasure.json; hours spent so far in OUT/NAME.hours).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import subprocess
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
BRANCH = "autoresearch/campaign"


def experiments(ledger: Ledger) -> list:
    """The campaign's experiments on record; one cut short by an interrupt is run again on resume."""
    return [e for e in ledger.all(BRANCH) if e.error_class != "interrupted"]


class RandomAgent:
    """Random search: every constant of the optuna agent's space drawn from its whole range, rejecting (and
    drawing again) what the optuna agent would refuse as unable to run."""

    name = "random"

    def __init__(self, workspace: Path, model: str | None = None, base_url: str | None = None, seed: int | None = None):
        self.root = Path(workspace)
        self.space = space_of((self.root / "train.py").read_text())
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
        # one generator per experiment index, so the same draws come whether or not the campaign was resumed
        ledger = Ledger(self.root, readonly=True)
        try:
            self.rng = random.Random(f"{SEARCH_SEED}-{len(experiments(ledger))}")
        finally:
            ledger.close()
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


def workspace(out: Path, name: str, budget: float | None) -> Settings:
    """The strategy's workspace: made on the first call, reopened (same budget) when resuming."""
    root = out / name
    if (root / "autoresearch.toml").exists():
        settings = Settings.load(root)
        if budget is not None and settings.profile.time_budget != budget:
            raise SystemExit(f"{root} was made with budget {settings.profile.time_budget:g}s, not {budget:g}s: "
                             "resume with the same options, or give another --out")
        return settings
    settings = init_workspace(root, "cpu", budget=budget, tag="campaign")
    pin_data(settings, load_manifest(settings.profile))
    return Settings.load(root)


def _json(path: Path, default):
    return json.loads(path.read_text()) if path.exists() else default


def _save(path: Path, value) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    tmp.replace(path)


def campaign(out: Path, name: str, args) -> bool:
    """Run (or resume) one strategy's campaign and its re-measures; False when interrupted."""
    agent, rule = STRATEGIES[name]
    settings = workspace(out, name, args.budget)
    root = settings.root
    ledger = Ledger(root)
    left = args.experiments - len(experiments(ledger))
    hours_file = out / f"{name}.hours"
    if left > 0:
        print(f"{name}: {args.experiments - left} experiments on record, {left} to go", flush=True)
        t0 = time.time()
        try:
            run_loop(root, agent, Limits(max_experiments=left), rule=rule, noise_runs=args.noise_runs)
        finally:
            _save(hours_file, _json(hours_file, 0.0) + (time.time() - t0) / 3600)
        if len(experiments(ledger)) < args.experiments:
            return False  # the loop was interrupted (it says so): the same command resumes it

    # re-measure with fresh seeds, by the harness's own code path: the baseline and the frontier `--repeats`
    # times, every kept commit between them `--repeats-kept` times
    kept = [e for e in experiments(ledger) if e.status == "keep"]
    store = out / f"{name}.remeasure.json"
    again = _json(store, {})
    session = Session(settings, ledger, sandbox.resolve(None), BRANCH)
    journal, frontier_text = Journal(root), git(root, "show", "HEAD:train.py")  # HEAD: a killed re-measure left its own
    try:
        for e in kept:
            want = args.repeats if e in (kept[0], kept[-1]) else args.repeats_kept
            values = again.setdefault(str(e.id), [])
            if len(values) >= want:
                continue
            (root / "train.py").write_text(git(root, "show", f"{e.commit}:train.py"))
            for i in range(len(values), want):
                tag = f"re{e.id:04d}-{i}"
                shutil.rmtree(root / "runs" / tag, ignore_errors=True)
                s = measure(session, root / "runs" / tag, root / "runs" / f"{tag}.log", journal, FRESH_SEED + i)
                values.append(s.val_bpb if s.status == "ok" else math.inf)
                _save(store, again)
                print(f"{name}: re-measured #{e.id} seed {FRESH_SEED + i}: {values[-1]:.4f}", flush=True)
    except KeyboardInterrupt:
        print(f"{name}: re-measure interrupted; the same command resumes it", flush=True)
        return False
    finally:
        (root / "train.py").write_text(frontier_text)
        git(root, "checkout", "--", "train.py", check=False)
    return True


def load(out: Path, name: str) -> dict:
    """One strategy's results, read back from its workspace and the re-measure store."""
    agent, rule = STRATEGIES[name]
    rows = experiments(Ledger(out / name))
    best, curve = None, []
    for e in rows:
        if e.status == "keep":
            best = e.val_bpb
        curve.append(best)
    kept = [e for e in rows if e.status == "keep"]
    again = {int(k): v for k, v in _json(out / f"{name}.remeasure.json", {}).items()}
    return {"name": name, "agent": agent, "rule": rule, "rows": rows, "curve": curve, "kept": kept, "again": again,
            "hours": _json(out / f"{name}.hours", 0.0)}


def summarise(result: dict) -> dict:
    kept, again = result["kept"], result["again"]
    base, front = again[kept[0].id], again[kept[-1].id]
    floor = selection.pooled_noise(list(again.values()))
    std = floor.std if floor else None
    mean = lambda xs: statistics.fmean(xs) if xs and all(math.isfinite(x) for x in xs) else math.inf  # noqa: E731
    gain = mean(base) - mean(front)

    def beats_baseline(values: list[float]) -> bool:  # by more than 2 standard errors of the difference
        margin = 2 * std * math.sqrt(1 / len(base) + 1 / len(values)) if std is not None else 0.0
        return mean(base) - mean(values) > margin

    false = sum(1 for e in kept[1:] if not beats_baseline(again[e.id]))
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


def side_by_side(out: Path, names: list[str], args) -> bool:
    """Each strategy in its own process, pinned to its own equal share of this process's CPUs, all at once;
    their output goes to OUT/NAME.log. True when every one finished."""
    cpus = sorted(os.sched_getaffinity(0))
    share = len(cpus) // len(names)
    if share < 1:
        raise SystemExit(f"--parallel needs a CPU per strategy: {len(names)} strategies, {len(cpus)} CPUs")
    common = ["--experiments", str(args.experiments), "--repeats", str(args.repeats), "--repeats-kept",
              str(args.repeats_kept), "--noise-runs", str(args.noise_runs), "--out", str(out)]
    common += ["--budget", repr(args.budget)] if args.budget is not None else []
    procs = []
    for i, name in enumerate(names):
        mine = set(cpus[i * share:(i + 1) * share])
        env = {**os.environ, "OMP_NUM_THREADS": str(share), "MKL_NUM_THREADS": str(share)}
        print(f"{name}: CPUs {sorted(mine)}, {share} thread(s); log {out / (name + '.log')}", flush=True)
        with open(out / f"{name}.log", "a") as log:
            procs.append(subprocess.Popen([sys.executable, __file__, *common, "--one", name], env=env, stdout=log,
                                          stderr=subprocess.STDOUT,
                                          preexec_fn=lambda m=mine: os.sched_setaffinity(0, m)))
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:  # the children got the same Ctrl-C: let them record it and stop
        codes = [p.wait() for p in procs]
    return all(c == 0 for c in codes)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiments", type=int, default=60, help="experiments per strategy, the baseline included")
    ap.add_argument("--budget", type=float, default=None, help="training seconds (default: the cpu profile's)")
    ap.add_argument("--repeats", type=int, default=3, help="fresh-seed re-measures of the baseline and the frontier")
    ap.add_argument("--repeats-kept", type=int, default=1, help="fresh-seed re-measures of each kept commit between")
    ap.add_argument("--noise-runs", type=int, default=4, help="repeats of the frontier behind the noise floor")
    ap.add_argument("--strategies", default="loop,random", help=f"comma-separated, of {', '.join(STRATEGIES)}")
    ap.add_argument("--parallel", action="store_true", help="run the strategies at once, each on its own CPUs")
    ap.add_argument("--out", type=Path, default=None, help="folder for the plot and the workspaces (resumable)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one strategy of --parallel
    args = ap.parse_args()
    names = [n.strip() for n in args.strategies.split(",") if n.strip()]
    if unknown := [n for n in names if n not in STRATEGIES]:
        ap.error(f"unknown strategies {unknown} (known: {', '.join(STRATEGIES)})")
    agents.REGISTRY["random"] = "bench_campaign:RandomAgent"

    out = (args.out or Path(tempfile.mkdtemp(prefix="bench-campaign-"))).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("AUTORESEARCH_CACHE", str(Path.home() / ".cache" / "autoresearch"))
    if args.one:
        return 0 if campaign(out, args.one, args) else 130
    prepare(get_profile("cpu"), progress=False)
    budget = args.budget if args.budget is not None else get_profile("cpu").time_budget
    print(machine_info())
    print(f"campaign: {args.experiments} experiments per strategy, budget {budget:g}s, re-measures: {args.repeats} "
          f"of the baseline and the frontier, {args.repeats_kept} of each kept commit between; "
          f"{'side by side' if args.parallel else 'one after the other'}; workspaces in {out}", flush=True)
    if args.parallel:
        finished = side_by_side(out, names, args)
    else:
        finished = True
        for name in names:
            print(f"\n== {name} ==", flush=True)
            if not campaign(out, name, args):
                finished = False
                break
    if not finished:
        print(f"\nnot finished: run the same command with --out {out} to resume", flush=True)
        return 130
    results = [load(out, name) for name in names]
    print("\n" + table(results))
    plot(results, out / "campaign.png")
    print(f"\nplot: {out / 'campaign.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
