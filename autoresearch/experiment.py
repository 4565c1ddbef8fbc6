"""One experiment, end to end: guard -> commit -> train -> evaluate -> decide -> record -> keep/reset.

    autoresearch run -m "what I tried"

Every step that changes something is announced in a journal (`.autoresearch/current.json`) before it
happens, so a run killed at any point is finished or undone by `recover()` at the start of the next one.
The workspace lock (an flock, released by the kernel even on SIGKILL) keeps two runs apart.
"""

from __future__ import annotations

import signal
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import layout, selection
from .task import TaskError
from .git import git
from .guard import Session, check_branch, out_of_scope, session
from .harness.protocol import DEFAULT_SEED
from .ledger import Experiment, Ledger
from .noise import NOISE_RUNS, ensure_noise_floor
from .recovery import Journal, preserve, recover
from .trial import Sample, evaluate, measure, pause
from .workspace import WorkspaceError

EXIT_CODES = {"keep": 0, "discard": 0, "crash": 3, "timeout": 4, "rejected": 5, "invalid": 6}


class Interrupted(Exception):
    """SIGINT/SIGTERM reached the harness while an experiment was running."""


@dataclass
class Outcome:
    experiment: Experiment
    frontier_bpb: float | None
    metric: str = "val_bpb"     # the task's metric (the ledger keeps it in its val_bpb column)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.experiment.status, 1)

    def verdict(self) -> str:
        exp = self.experiment
        parts = [f"{exp.status:8s}"]
        if exp.val_bpb is not None:
            parts.append(f"{self.metric} {exp.val_bpb:.6f}")
            if self.frontier_bpb is not None:
                parts.append(f"({exp.val_bpb - self.frontier_bpb:+.6f} vs frontier {self.frontier_bpb:.6f})")
        if exp.error_class:
            parts.append(f"[{exp.error_class}]")
        if exp.commit:
            parts.append(f"commit {exp.short}")
        if exp.log_path:
            parts.append(f"log {exp.log_path}")
        lines = ["  ".join(parts)]
        if exp.reason and exp.status in ("keep", "discard"):
            lines.append(f"reason: {exp.reason}")
        if exp.status in ("crash", "timeout", "rejected", "invalid") and exp.error_excerpt:
            lines.append(exp.error_excerpt.rstrip())
        return "\n".join(lines)


# ---------------------------------------------------------------------------
# The experiment

def start_experiment(s: Session, description: str) -> Experiment:
    """The experiment's row before anything runs: its parent is the frontier (or HEAD for a baseline)."""
    ledger, root = s.ledger, s.root
    frontier = ledger.frontier(s.branch)
    frontier_commit = frontier.commit if frontier else git(root, "rev-parse", "HEAD")
    if frontier and git(root, "cat-file", "-t", frontier_commit, check=False) != "commit":
        raise WorkspaceError(f"the frontier commit {frontier_commit[:7]} recorded in the ledger is missing from git")
    bar = statistics.fmean(ledger.samples(s.branch, frontier_commit) or [frontier.val_bpb]) if frontier else None
    return Experiment(branch=s.branch, parent=frontier_commit, description=description, frontier_bpb=bar)


def run_experiment(root: Path, description: str, rule: str = selection.DEFAULT_RULE, meta: dict | None = None,
                   sandbox_mode: str | None = None, noise_runs: int = NOISE_RUNS) -> Outcome:
    """`autoresearch run`: one experiment on the workspace's current train.py, in a session of its own."""
    if rule not in selection.RULES:
        raise WorkspaceError(f"unknown keep rule {rule!r} (known: {', '.join(selection.RULES)})")
    with session(root, sandbox_mode) as s:
        return run_in_session(s, description, rule, meta, noise_runs)


def run_in_session(s: Session, description: str, rule: str = selection.DEFAULT_RULE, meta: dict | None = None,
                   noise_runs: int = NOISE_RUNS) -> Outcome:
    """One experiment on the current train.py; `meta` adds agent fields to its ledger row."""
    if rule not in selection.RULES:
        raise WorkspaceError(f"unknown keep rule {rule!r} (known: {', '.join(selection.RULES)})")
    check_branch(s)
    root, ledger = s.root, s.ledger
    if rule == "noise" and ledger.frontier(s.branch) is not None:
        ensure_noise_floor(s, noise_runs)
    exp = start_experiment(s, description)
    exp.rule, exp.sandbox = rule, s.sandbox
    for key, value in (meta or {}).items():
        setattr(exp, key, value)

    offending = out_of_scope(root, exp.parent, s.task)
    if offending:
        editable = ", ".join(s.task.editable)
        exp.status, exp.error_class = "rejected", "scope"
        exp.error_excerpt = f"only {editable} may change; also changed: " + ", ".join(offending[:20])
        exp.reason = f"guard: changes outside {editable}, nothing was run"
        exp.finished_at = time.time()
        ledger.insert(exp)
        ledger.write_tsv()
        return Outcome(exp, exp.frontier_bpb, s.task.metric)

    ledger.insert(exp)
    journal = Journal(root)
    journal.write(id=exp.id, phase="started", frontier=exp.parent, head=git(root, "rev-parse", "HEAD"))
    try:
        return _run(s, exp, journal, rule)
    except TaskError as e:  # the task's own evaluator is broken: undo the experiment, record nothing
        _undo(s, exp, journal)
        raise WorkspaceError(f"{e}. The task is broken, not the candidate: nothing was recorded, and your edits "
                             "are in the tree, uncommitted, as before the run") from e
    except Interrupted:
        # Ctrl-C: the experiment is recorded as interrupted and the tree goes back to the frontier
        for message in recover(root, ledger, reason="interrupted by the user"):
            print(f"recover: {message}", file=sys.stderr)
        final = ledger.get(exp.id)
        return Outcome(final, final.frontier_bpb, s.task.metric)
    except Exception as e:  # disk full, git failure...: undo what we can, say how to finish
        try:
            recover(root, ledger, reason=f"harness error: {e}")
            state = "the experiment was recorded as crashed and the tree reset to the frontier"
        except Exception:  # noqa: BLE001 - still failing (e.g. the disk is still full)
            state = "run `autoresearch recover` once the cause is fixed; nothing has been lost"
        raise WorkspaceError(f"{e} ({state})") from e


def _undo(s: Session, exp: Experiment, journal: Journal) -> None:
    """Take back an experiment that never got a result: HEAD to the frontier with the candidate's edits left
    uncommitted in the tree, its ledger row and runs gone, the journal cleared."""
    git(s.root, "reset", "--quiet", "--soft", exp.parent)
    git(s.root, "reset", "--quiet")
    s.ledger.delete(exp.id)
    s.ledger.write_tsv()
    journal.clear()


class _Signals:
    """SIGINT/SIGTERM raise Interrupted while an experiment trains (the handlers are put back after)."""

    def __enter__(self):
        self.previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def on_signal(signum, frame):
            raise Interrupted()

        for s in self.previous:
            signal.signal(s, on_signal)
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def _sample_into(exp: Experiment, sample: Sample) -> None:
    for name in ("memory_gb", "steps", "params_m", "mfu_percent", "training_seconds", "startup_seconds",
                 "export_seconds", "train_wall_seconds", "eval_wall_seconds"):
        setattr(exp, name, getattr(sample, name))
    if sample.status != "ok":
        exp.status, exp.error_class, exp.error_excerpt = sample.status, sample.error_class, sample.error_excerpt


def _record_run(ledger: Ledger, exp: Experiment, sample: Sample, kind: str) -> None:
    ledger.add_run(exp.branch, exp.commit, kind, sample.seed if sample.seed is not None else DEFAULT_SEED,
                   sample.val_bpb, sample.status, sample.error_class,
                   str(sample.log_path.relative_to(ledger.root)), experiment_id=exp.id)


def _run(s: Session, exp: Experiment, journal: Journal, rule: str) -> Outcome:
    root, ledger, frontier_commit = s.root, s.ledger, exp.parent
    t0 = time.monotonic()

    # Commit: one commit = one experiment
    git(root, "reset", "--quiet", "--soft", frontier_commit)
    git(root, "add", "--", *([layout.CANDIDATE] if s.task.is_gpt else s.task.editable_files(root)))
    # no background `git gc --auto`: it would repack refs while train.py runs (and look like tampering)
    git(root, "-c", "gc.auto=0", "commit", "--quiet", "--allow-empty", "-m", exp.description or "(no description)")
    exp.commit = git(root, "rev-parse", "HEAD")
    run_dir, log_path = layout.run_dir(root, exp.id), layout.run_log(root, exp.id)
    run_dir.mkdir(parents=True, exist_ok=True)
    exp.log_path = str(log_path.relative_to(root))
    ledger.update(exp)
    journal.update(phase="committed", commit=exp.commit, run_dir=str(run_dir))
    pause("committed", journal)

    with _Signals():
        sample = measure(s, run_dir, log_path, journal, None, test_ahead=True)
        try:
            _record_run(ledger, exp, sample, "experiment")
            _sample_into(exp, sample)
            if sample.status == "ok":
                _decide(s, exp, journal, rule, sample)
                if exp.status == "keep":
                    _score_test(s, exp, sample)
        finally:
            sample.cancel_test()  # not kept (or interrupted): the test split's scoring stops unread
    if exp.status in ("crash", "timeout", "invalid"):
        exp.reason = exp.reason or f"{exp.status}: {exp.error_class}"
    exp.total_seconds = round(time.monotonic() - t0, 2)
    exp.finished_at = time.time()

    journal.update(phase="recording")
    pause("recording", journal)
    ledger.update(exp)
    journal.update(phase="recorded", status=exp.status)

    if exp.status != "keep":
        pause("resetting", journal)
        preserve(root, exp)
        git(root, "reset", "--quiet", "--hard", frontier_commit)
        for folder in layout.run_dirs_of(root, exp.id):
            (folder / layout.EXPORTED_MODEL).unlink(missing_ok=True)  # exported weights of discarded runs go
    journal.clear()
    return Outcome(exp, exp.frontier_bpb, s.task.metric)


def _decide(s: Session, exp: Experiment, journal: Journal, rule: str, first: Sample) -> None:
    """The keep rule on this candidate's samples, with confirmation runs while the rule asks for them."""
    ledger, values = s.ledger, [first.val_bpb]
    frontier = ledger.samples(exp.branch, exp.parent) if exp.frontier_bpb is not None else []
    while True:
        noise = selection.pooled_noise(ledger.sample_groups(exp.branch)) if rule == "noise" else None
        decision = selection.decide(values, frontier, rule, noise, direction=s.task.direction)
        if decision.verdict != "confirm":
            break
        n = len(values) + 1
        run_dir, log_path = layout.run_dir(s.root, exp.id, n), layout.run_log(s.root, exp.id, n)
        print(f"confirm: {decision.reason}; confirmation run {n - 1} (seed {DEFAULT_SEED + n - 1}), "
              f"log {log_path.relative_to(s.root)}", file=sys.stderr)
        journal.update(phase="confirming")
        first.cancel_test()  # nothing runs beside a training run: the kept model's test split is scored later
        again = measure(s, run_dir, log_path, journal, DEFAULT_SEED + n - 1)
        _record_run(ledger, exp, again, "confirm")
        if again.status != "ok":
            if again.status == "invalid":
                _sample_into(exp, again)
                return
            decision = selection.Decision("discard", f"{decision.reason}; the confirmation run failed "
                                          f"({again.status}: {again.error_class})")
            break
        values.append(again.val_bpb)
    exp.val_bpb = statistics.fmean(values)
    exp.samples = len(values)
    exp.status, exp.reason = decision.verdict, decision.reason
    if first.note:
        exp.reason += f" ({first.note})"


def _score_test(s: Session, exp: Experiment, sample: Sample) -> None:
    """A kept model is scored on the held-out test split too; it never takes part in a decision. The scoring
    started ahead by the val split's evaluator is taken when it still runs (no confirmation run came between)."""
    if sample.test_ahead is not None:
        ahead, sample.test_ahead = sample.test_ahead, None
        result = ahead.result(timeout=s.profile.time_rules.eval_timeout)
    else:
        result = evaluate(s, sample.program, sample.run_dir, "test")
    if "error" in result:
        exp.reason += f"; test split not scored ({result['error_class']}: {result['error']})"
    else:
        exp.test_bpb = result["test_bpb"]
