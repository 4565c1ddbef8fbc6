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
import sys
import time
from pathlib import Path

from . import layout, selection
from .git import git, show_file
from .guard import Session, session
from .harness.protocol import DEFAULT_SEED
from .recovery import Journal, park, park_files, unpark
from .trial import measure
from .workspace import WorkspaceError

NOISE_RUNS = 4   # repeats of the frontier when the noise rule finds no noise floor: 5 samples, 4 dof


def measure_noise(s: Session, runs: int) -> dict:
    """K repeats of the frontier commit (whose train.py must be in the tree); returns the session."""
    if runs < 1:
        raise WorkspaceError("--runs must be at least 1")
    root, ledger, branch = s.root, s.ledger, s.branch
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
        run_dir, log_path = layout.noise_run(root, stamp, i + 1)
        print(f"noise: run {i + 1}/{runs} of {frontier.short} (seed {seed}), log {log_path.relative_to(root)}",
              file=sys.stderr)
        sample = measure(s, run_dir, log_path, journal, seed)
        ledger.add_run(branch, frontier.commit, "noise", seed, sample.val_bpb, sample.status, sample.error_class,
                       str(log_path.relative_to(root)))
        sample.program.unlink(missing_ok=True)
        if sample.status == "ok":
            values.append(sample.val_bpb)
            print(f"noise: {s.task.metric} {sample.val_bpb:.6f}", file=sys.stderr)
        else:
            print(f"noise: run failed ({sample.status}: {sample.error_class})", file=sys.stderr)
    journal.clear()
    if not values:
        raise WorkspaceError(f"every noise run failed; see the logs under {layout.RUNS}/noise-*")
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    ledger.add_noise(branch, frontier.commit, values, mean, std)
    floor = selection.pooled_noise(ledger.sample_groups(branch))
    return {"branch": branch, "commit": frontier.commit, "values": values, "mean": mean, "std": std,
            "frontier_bpb": frontier.val_bpb, "pooled_std": floor.std if floor else None,
            "pooled_dof": floor.dof if floor else 0}


def ensure_noise_floor(s: Session, runs: int) -> None:
    """Measure the floor until it rests on `runs` degrees of freedom (as many as `runs` repeats of one commit
    give), with the candidate's train.py parked meanwhile. A measurement cut short (Ctrl-C in the loop's first
    minutes) left fewer: one repeat's floor can be near zero by chance, and every gain above it would be kept,
    so the missing repeats are run before anything is decided with it."""
    floor = selection.pooled_noise(s.ledger.sample_groups(s.branch))
    have = floor.dof if floor is not None else 0
    if have >= runs:
        return
    frontier = s.ledger.frontier(s.branch)
    what = "no noise floor" if floor is None else f"a noise floor of {have} degree(s) of freedom of {runs}"
    print(f"noise: {what} on {s.branch} yet; measuring it with {runs - have} repeat(s) of the frontier "
          f"{frontier.short} first", file=sys.stderr)
    if s.task.is_gpt:
        park(s.root, show_file(s.root, frontier.commit, layout.CANDIDATE))
    else:
        park_files(s.root, {name: show_file(s.root, frontier.commit, name) for name in s.task.editable_files(s.root)})
    try:
        measure_noise(s, runs - have)
    finally:
        unpark(s.root)


def run_noise(root: Path, runs: int, sandbox_mode: str | None = None) -> dict:
    """`autoresearch noise`: measure the floor on the frontier; the tree must hold the frontier's train.py."""
    with session(root, sandbox_mode) as s:
        files = [layout.CANDIDATE] if s.task.is_gpt else s.task.editable_files(s.root)
        if s.ledger.frontier(s.branch) is not None and git(s.root, "status", "--porcelain", "--", *files):
            raise WorkspaceError(f"{', '.join(files)} has edits that are not the frontier's; the noise floor is measured on "
                                 "the frontier: run or put aside your edit first (nothing was changed)")
        return measure_noise(s, runs)
