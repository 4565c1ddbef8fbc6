"""Soak: a default `autoresearch loop` of many short experiments, watched from another terminal meanwhile.

    python bench/bench_soak.py --experiments 50 --budget 3

In a fresh cpu workspace (its own cache unless $AUTORESEARCH_CACHE is set): `autoresearch init`, `prepare`,
then `autoresearch loop --max-experiments N` with every default (the Optuna agent, the noise rule, the
sandbox), while a second process runs `status`, `show`, `lineage` and `report` in turn, as a user would.
Printed: the verdicts, how many honest proposals were recorded `invalid` (must be 0), processes left with
the workspace's marker (must be 0), files left in the temporary folder (the run's own TMPDIR) and in the
workspace beyond what the ledger accounts for (must be 0), and the wall time. Exit code 1 when any is not 0.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autoresearch.layout import run_dirs_of  # noqa: E402
from autoresearch.procs import owned_pids  # noqa: E402


def cli(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([shutil.which("autoresearch") or "autoresearch", *args], cwd=cwd, capture_output=True,
                          text=True)
    if check and done.returncode != 0:
        raise SystemExit(f"autoresearch {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done


def watch(lab: Path, stop: threading.Event, seen: collections.Counter) -> None:
    """A user in another terminal: read-only commands, one after another, until the loop ends."""
    commands = (["status"], ["show", "1"], ["lineage"], ["report"], ["status", "--json"])
    i = 0
    while not stop.is_set():
        done = cli(*commands[i % len(commands)], cwd=lab, check=False)
        seen["ok" if done.returncode == 0 else f"failed: {' '.join(commands[i % len(commands)])}"] += 1
        i += 1
        stop.wait(1.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=50)
    parser.add_argument("--budget", type=float, default=3.0)
    parser.add_argument("--keep", action="store_true", help="keep the workspace (its path is printed)")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="soak-"))
    os.environ.setdefault("AUTORESEARCH_CACHE", str(base / "cache"))
    lab = base / "lab"
    tmp = base / "tmp"  # the harness's temporary folder, its own: other work on the machine cannot blur it
    tmp.mkdir()
    os.environ["TMPDIR"] = str(tmp)
    t0 = time.monotonic()
    cli("init", str(lab), "--profile", "cpu", "--budget", f"{args.budget:g}", cwd=base)
    cli("prepare", cwd=lab)

    stop, seen = threading.Event(), collections.Counter()
    watcher = threading.Thread(target=watch, args=(lab, stop, seen), daemon=True)
    watcher.start()
    loop = subprocess.run([shutil.which("autoresearch") or "autoresearch", "loop", "--max-experiments",
                           str(args.experiments)], cwd=lab, capture_output=True, text=True)
    stop.set()
    watcher.join()
    wall = time.monotonic() - t0

    db = sqlite3.connect(lab / ".autoresearch" / "ledger.sqlite")
    rows = db.execute("SELECT id, status, error_class, error_excerpt FROM experiments ORDER BY id").fetchall()
    runs = collections.Counter(kind for (kind,) in db.execute("SELECT kind FROM runs"))
    db.close()
    verdicts = collections.Counter(status for _, status, _, _ in rows)
    invalid = [(i, c, (e or "").splitlines()[0][:120]) for i, s, c, e in rows if s == "invalid"]
    leaked = owned_pids(lab)
    new_tmp = sorted(str(p) for p in tmp.iterdir())
    untracked = subprocess.run(["git", "status", "--porcelain"], cwd=lab, capture_output=True, text=True).stdout
    programs = sorted(str(p.relative_to(lab)) for p in (lab / "runs").rglob("model.pt2"))
    kept = {str(d.relative_to(lab) / "model.pt2") for i, s, _, _ in rows if s == "keep" for d in run_dirs_of(lab, i)}
    stray_programs = [p for p in programs if p not in kept]

    print(f"soak: {len(rows)} experiments in {wall / 60:.1f} min (budget {args.budget:g} s, loop exit "
          f"{loop.returncode}); verdicts {dict(verdicts)}; training runs {dict(runs)}")
    print(f"watcher: {dict(seen)}")
    print(f"invalid verdicts on honest proposals: {len(invalid)} {invalid}")
    print(f"leaked processes: {len(leaked)} {leaked}")
    print(f"files left: temp folder {len(new_tmp)} {new_tmp[:5]}; workspace changes {untracked.strip() or 'none'}; "
          f"exported models of unkept runs {len(stray_programs)}")
    if args.keep:
        print(f"workspace kept at {lab}")
    else:
        shutil.rmtree(base, ignore_errors=True)
    failed = (invalid or leaked or new_tmp or untracked.strip() or stray_programs or loop.returncode != 0
              or len(rows) < args.experiments or any(k != "ok" for k in seen))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
