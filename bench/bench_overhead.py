"""The harness's own cost per experiment: time `autoresearch run` spends outside train.py and the evaluator.

Run (from the repository root):

    python bench/bench_overhead.py --runs 5

It makes a temporary cpu workspace with a 2 s budget and runs `autoresearch run -m ...` --runs times as a
user would (a real subprocess each time; every run after the baseline is a one-line edit of train.py).
For each run it takes the command's wall time, measured here, and subtracts the wall time of the train.py
process and of the evaluator process, both recorded in the ledger by the harness. What remains is the
harness: interpreter and CLI start-up, lock, recovery check, guard (git diff), commit, spawning, polling
latency, ledger + results.tsv writes and the keep/reset. Goal: under 1 s. A second line shows the same
for the `--help`-level start-up alone (the floor any Python CLI pays).
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine_info, temp_workspace  # noqa: E402

CLI = [sys.executable, "-m", "autoresearch.cli"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--budget", type=float, default=2.0)
    args = parser.parse_args()
    print(machine_info())
    t = time.monotonic()
    subprocess.run([*CLI, "--help"], capture_output=True, check=True)
    startup = time.monotonic() - t
    rows = []
    with temp_workspace(args.budget, tag="overhead") as root:
        train = root / "train.py"
        for i in range(args.runs):
            if i:  # a real candidate: one constant changed, alternating so every run has a diff
                text = train.read_text()
                train.write_text(text.replace("SEED = 42 ", "SEED = 43 ") if "SEED = 42 " in text
                                 else text.replace("SEED = 43 ", "SEED = 42 "))
            t = time.monotonic()
            proc = subprocess.run([*CLI, "run", "-m", f"overhead probe {i}"], cwd=root, capture_output=True, text=True)
            wall = time.monotonic() - t
            if proc.returncode not in (0,):
                print(proc.stdout, proc.stderr, file=sys.stderr)
                return 2
            db = sqlite3.connect(root / ".autoresearch" / "ledger.sqlite")
            train_wall, eval_wall, status = db.execute(
                "SELECT train_wall_seconds, eval_wall_seconds, status FROM experiments ORDER BY id DESC LIMIT 1"
            ).fetchone()
            db.close()
            rows.append((i, status, wall, train_wall, eval_wall, wall - train_wall - eval_wall))
    print(f"\n{'run':>3}  {'status':8} {'wall s':>7} {'train s':>8} {'eval s':>7} {'harness s':>10}")
    for i, status, wall, tr, ev, over in rows:
        print(f"{i:>3}  {status:8} {wall:7.2f} {tr:8.2f} {ev:7.2f} {over:10.3f}")
    median = statistics.median(r[5] for r in rows)
    print(f"\nCLI start-up alone (autoresearch --help): {startup:.3f} s")
    print(f"harness overhead per experiment (median of {len(rows)}): {median:.3f} s (goal < 1 s): "
          f"{'OK' if median < 1.0 else 'ABOVE GOAL'}")
    return 0 if median < 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
