"""Experiments per hour, before and after a change to the harness: the same experiments, side by side.

Run (from the repository root, on a machine nothing else is using):

    python bench/bench_throughput.py --before 8a4e668 --after HEAD --budget 15 --experiments 4

Each side is the package as committed at its revision (`git archive` into a temporary folder), with a cpu
workspace of its own made by that package (`--budget` seconds of training). Both sides first run the same
baseline (kept: its test split is scored too), then the same `--experiments` candidates, alternating sides
(before, after; then after, before; ...) so that a change in the machine's load falls on both. Every
candidate scales every learning rate down (x0.001, x0.0011, ...): certainly worse than the baseline, so each
is discarded on both sides and the two sides do the same work. Each run is a real `autoresearch run -m ...
--rule strict` subprocess, timed here; the phases come from that side's ledger:

  start-up, training, export, rest   train.py's process (the window is fixed from launch: start-up
                                     left unused is training, so this part moves little)
  evaluation                         asked to score -> the result (the evaluator process)
  test split                         the kept baseline only
  harness                            everything else: this command's wall time minus the above (CLI
                                     start, guard, git, tripwire, ledger, waiting on processes)

and experiments/hour = 3600 / the mean wall time of the candidates (discards: the common case of a loop).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine_info  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LRS = ("EMBEDDING_LR", "UNEMBEDDING_LR", "MATRIX_LR", "SCALAR_LR")
PHASES = ("start-up", "training", "export", "rest", "evaluation", "test split", "harness", "total")

MAKE_WORKSPACE = """
import contextlib, sys
from pathlib import Path
from autoresearch.harness.prepare import prepare
from autoresearch.harness.profiles import get_profile
from autoresearch.workspace import init_workspace, pin_data
settings = init_workspace(Path(sys.argv[1]), "cpu", budget=float(sys.argv[2]), tag="throughput")
with contextlib.redirect_stdout(sys.stderr):
    manifest = prepare(get_profile("cpu"), progress=False)
pin_data(settings, manifest)
"""
CLI = "import sys; sys.argv[0] = 'autoresearch'; from autoresearch.cli import app; app()"


class Side:
    """One revision of the package and its own workspace."""

    def __init__(self, name: str, rev: str, tmp: Path, budget: float):
        self.name, self.rev = name, rev
        self.package = tmp / f"{name}-package"
        self.package.mkdir()
        archive = subprocess.run(["git", "archive", rev, "autoresearch"], cwd=REPO, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(self.package)], input=archive.stdout, check=True)
        self.commit = subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO, capture_output=True,
                                     text=True, check=True).stdout.strip()
        self.env = dict(os.environ, PYTHONPATH=str(self.package))
        self.root = tmp / f"{name}-workspace"
        subprocess.run([sys.executable, "-c", MAKE_WORKSPACE, str(self.root), str(budget)], env=self.env,
                       cwd=tmp, check=True, capture_output=True)  # not here: `-c` puts the working folder first
        self.baseline_lrs = {name: _constant(self.root / "train.py", name) for name in LRS}
        self.rows: list[dict] = []

    def run(self, description: str, scale: float | None) -> dict:
        """One `autoresearch run`, train.py's learning rates scaled by `scale` (None: as committed)."""
        train = self.root / "train.py"
        if scale is not None:
            text = train.read_text()
            for name, value in self.baseline_lrs.items():
                text = re.sub(rf"^{name} = \S+", f"{name} = {value * scale:.6g}", text, count=1, flags=re.M)
            train.write_text(text)
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-c", CLI, "run", "-m", description, "--rule", "strict"],
                              cwd=self.root, env=self.env, capture_output=True, text=True)
        wall = time.monotonic() - t0
        if proc.returncode not in (0,):
            raise SystemExit(f"{self.name}: `autoresearch run` exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        db = sqlite3.connect(self.root / ".autoresearch" / "ledger.sqlite")
        db.row_factory = sqlite3.Row
        row = dict(db.execute("SELECT * FROM experiments ORDER BY id DESC LIMIT 1").fetchone())
        db.close()
        return phases(row, wall)


def _constant(path: Path, name: str) -> float:
    match = re.search(rf"^{name} = ([0-9.eE+-]+)", path.read_text(), flags=re.M)
    if match is None:
        raise SystemExit(f"{name} not found in {path}")
    return float(match.group(1))


def phases(row: dict, wall: float) -> dict:
    """Seconds per phase of one experiment (see the module docstring), from its ledger row."""
    def get(key: str) -> float:
        return row.get(key) or 0.0

    train_wall, evaluation = get("train_wall_seconds"), get("eval_wall_seconds")
    inside = get("startup_seconds") + get("training_seconds") + get("export_seconds")
    # an older ledger has no test_seconds: its test split is what its total holds beyond train and evaluation
    test = row.get("test_seconds")
    if test is None:
        test = max(0.0, get("total_seconds") - train_wall - evaluation) if row["status"] == "keep" else 0.0
    out = {"start-up": get("startup_seconds"), "training": get("training_seconds"), "export": get("export_seconds"),
           "rest": max(0.0, train_wall - inside), "evaluation": evaluation, "test split": test,
           "harness": max(0.0, wall - train_wall - evaluation - test), "total": wall}
    return out | {"status": row["status"], "val_bpb": row["val_bpb"], "steps": row["steps"], "load": os.getloadavg()[0]}


def table(title: str, sides: list[Side], pick) -> list[str]:
    """Mean and median seconds per phase, one column pair per side."""
    lines = [title, f"{'phase (s)':16}" + "".join(f"{s.name + ' ' + s.commit:>26}" for s in sides),
             f"{'':16}" + "".join(f"{'mean':>13}{'median':>13}" for _ in sides)]
    for phase in PHASES:
        cells = [(statistics.fmean(r[phase] for r in pick(s)), statistics.median(r[phase] for r in pick(s)))
                 for s in sides]
        lines.append(f"{phase:16}" + "".join(f"{mean:13.2f}{median:13.2f}" for mean, median in cells))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="8a4e668", help="revision before the change (default: 8a4e668, the "
                        "commit before the throughput work)")
    parser.add_argument("--after", default="HEAD", help="revision after it (default: HEAD)")
    parser.add_argument("--budget", type=float, default=15.0)
    parser.add_argument("--experiments", type=int, default=4, help="candidates per side, after the baseline")
    args = parser.parse_args()
    print(machine_info())
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    tmp = Path(tempfile.mkdtemp(prefix="autoresearch-throughput-"))
    try:
        sides = [Side("before", args.before, tmp, args.budget), Side("after", args.after, tmp, args.budget)]
        baselines = {}
        for side in sides:
            baselines[side.name] = side.run("baseline", None)
            print(f"baseline  {side.name:6} {baselines[side.name]['status']:8} {baselines[side.name]['total']:6.1f} s",
                  flush=True)
        for i in range(args.experiments):
            scale = 0.001 * (1 + i / 10)
            for side in sides if i % 2 == 0 else reversed(sides):
                row = side.run(f"every learning rate x{scale:g}", scale)
                side.rows.append(row)
                print(f"candidate {i + 1} {side.name:6} {row['status']:8} {row['total']:6.1f} s  "
                      f"(evaluation {row['evaluation']:.1f} s, harness {row['harness']:.1f} s, steps {row['steps']}, "
                      f"load {row['load']:.2f})", flush=True)
        print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
        for line in table("baseline (kept: the test split is scored too)", sides, lambda s: [baselines[s.name]]):
            print(line)
        print()
        for line in table(f"candidates (mean of {args.experiments}, discarded)", sides, lambda s: s.rows):
            print(line)
        rates = {s.name: 3600 / statistics.fmean(r["total"] for r in s.rows) for s in sides}
        print(f"\nexperiments/hour (candidates): before {rates['before']:.1f}, after {rates['after']:.1f}, "
              f"ratio {rates['after'] / rates['before']:.3f}")
        rates = {s.name: 3600 / statistics.median(r["total"] for r in s.rows) for s in sides}
        print(f"experiments/hour (from the median candidate): before {rates['before']:.1f}, "
              f"after {rates['after']:.1f}, ratio {rates['after'] / rates['before']:.3f}")
        not_training = {s.name: statistics.fmean(r["total"] - r["training"] for r in s.rows) for s in sides}
        print(f"not training per candidate: before {not_training['before']:.1f} s, after {not_training['after']:.1f} s")
        if any(r["status"] != "discard" for s in sides for r in s.rows):
            print("note: not every candidate was discarded; the sides did not do the same work")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
