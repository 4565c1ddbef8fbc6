"""The noise floor: how much val_bpb moves when nothing changes but the seed and the timing.

    autoresearch noise --runs K

runs the frontier's train.py K more times with other seeds, records every run in the ledger (`runs`,
kind `noise`) and the session's mean and std (`noise`). The noise-aware keep rule pools every repeated
measurement of the branch (these repeats, and each candidate's confirmation runs) into one estimate of
the std of a single run, so the floor sharpens as the branch goes on.

When an experiment needs the floor before any exists, the candidate's train.py is set aside in
`.autoresearch/candidate-train.py` while the frontier's runs; recovery puts it back if we are killed.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

from . import selection
from .git import git
from .harness.protocol import DEFAULT_SEED, PROGRAM_FILE
from .harness.settings import Settings
from .ledger import Ledger
from .recovery import Journal
from .trial import CANDIDATE, measure
from .workspace import WorkspaceError

PARKED = "candidate-train.py"


def measure_noise(settings: Settings, ledger: Ledger, runs: int, box: str) -> dict:
    """K repeats of the frontier commit (whose train.py must be in the tree); returns the session."""
    from .experiment import workspace_branch

    if runs < 1:
        raise WorkspaceError("--runs must be at least 1")
    root = settings.root
    branch = workspace_branch(root)
    frontier = ledger.frontier(branch)
    if frontier is None:
        raise WorkspaceError("no kept experiment on this branch yet: run the baseline first "
                             "(`autoresearch run -m baseline`)")
    done = len([r for r in ledger.runs(branch) if r["kind"] == "noise" and r["commit_sha"] == frontier.commit])
    stamp = time.strftime("%Y%m%d-%H%M%S")
    journal = Journal(root)
    journal.update(phase="noise", frontier=frontier.commit, head=git(root, "rev-parse", "HEAD"))
    values = []
    for i in range(runs):
        seed = DEFAULT_SEED + 1 + done + i
        run_dir = root / "runs" / f"noise-{stamp}-{i + 1}"
        log_path = root / "runs" / f"noise-{stamp}-{i + 1}.log"
        print(f"noise: run {i + 1}/{runs} of {frontier.short} (seed {seed}), log {log_path.relative_to(root)}",
              file=sys.stderr)
        sample = measure(settings, run_dir, log_path, journal, seed, box, ledger)
        ledger.add_run(branch, frontier.commit, "noise", seed, sample.val_bpb, sample.status, sample.error_class,
                       str(log_path.relative_to(root)))
        (run_dir / PROGRAM_FILE).unlink(missing_ok=True)
        if sample.status == "ok":
            values.append(sample.val_bpb)
            print(f"noise: val_bpb {sample.val_bpb:.6f}", file=sys.stderr)
        else:
            print(f"noise: run failed ({sample.status}: {sample.error_class})", file=sys.stderr)
    journal.clear()
    if not values:
        raise WorkspaceError("every noise run failed; see the logs under runs/noise-*")
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    ledger.add_noise(branch, frontier.commit, values, mean, std)
    floor = selection.pooled_noise(ledger.sample_groups(branch))
    return {"branch": branch, "commit": frontier.commit, "values": values, "mean": mean, "std": std,
            "frontier_bpb": frontier.val_bpb, "pooled_std": floor.std if floor else None,
            "pooled_dof": floor.dof if floor else 0}


def ensure_noise_floor(settings: Settings, ledger: Ledger, runs: int, box: str) -> None:
    """Measure the floor when the branch has none, with the candidate's train.py parked meanwhile."""
    from .experiment import workspace_branch

    branch = workspace_branch(settings.root)
    if selection.pooled_noise(ledger.sample_groups(branch)) is not None:
        return
    root = settings.root
    frontier = ledger.frontier(branch)
    print(f"noise: no noise floor on {branch} yet; measuring it with {runs} repeat(s) of the frontier "
          f"{frontier.short} first", file=sys.stderr)
    candidate = (root / CANDIDATE).read_bytes()
    parked = root / ".autoresearch" / PARKED
    parked.write_bytes(candidate)
    try:
        shown = subprocess.run(["git", "show", f"{frontier.commit}:{CANDIDATE}"], cwd=root, capture_output=True,
                               check=True)
        (root / CANDIDATE).write_bytes(shown.stdout)
        measure_noise(settings, ledger, runs, box)
    finally:
        (root / CANDIDATE).write_bytes(candidate)
        parked.unlink()


def unpark(root: Path) -> str | None:
    """Recovery: put back a candidate train.py parked by an interrupted noise measurement."""
    parked = Path(root) / ".autoresearch" / PARKED
    if not parked.exists():
        return None
    (Path(root) / CANDIDATE).write_bytes(parked.read_bytes())
    parked.unlink()
    return "put back the candidate train.py set aside while the noise floor was measured"


def run_noise(root: Path, runs: int, sandbox_mode: str | None = None) -> dict:
    """`autoresearch noise`: measure the floor on the frontier; the tree must hold the frontier's train.py."""
    from .experiment import session, workspace_branch

    with session(root, sandbox_mode) as (settings, ledger, box):
        root = settings.root
        frontier = ledger.frontier(workspace_branch(root))
        if frontier is not None and git(root, "status", "--porcelain", "--", CANDIDATE):
            raise WorkspaceError("train.py has edits that are not the frontier's; the noise floor is measured on "
                                 "the frontier: run or put aside your edit first (nothing was changed)")
        return measure_noise(settings, ledger, runs, box)
