"""One experiment, end to end: guard -> commit -> train -> evaluate -> decide -> record -> keep/reset.

    autoresearch run -m "what I tried"

Every step that changes something is announced in a journal (`.autoresearch/current.json`) before it
happens, so a run killed at any point is finished or undone by `recover()` at the start of the next one.
The workspace lock (an flock, released by the kernel even on SIGKILL) keeps two runs apart.
"""

from __future__ import annotations

import os
import signal
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import sandbox, selection
from .git import current_branch, git
from .harness.prepare import load_manifest
from .harness.protocol import DEFAULT_SEED, PROGRAM_FILE
from . import __version__
from .harness.settings import METRIC_VERSION, METRIC_VERSIONS, Settings, harness_fingerprint
from .ledger import Experiment, Ledger
from .recovery import Journal, WorkspaceLock, preserve, recover
from .trial import CANDIDATE, Sample, evaluate, measure, pause
from .workspace import WorkspaceError

EXIT_CODES = {"keep": 0, "discard": 0, "crash": 3, "timeout": 4, "rejected": 5, "invalid": 6}
NOISE_RUNS = 4   # repeats of the frontier when the noise rule finds no noise floor: 5 samples, 4 dof


class Interrupted(Exception):
    """SIGINT/SIGTERM reached the harness while an experiment was running."""


@dataclass
class Outcome:
    experiment: Experiment
    frontier_bpb: float | None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.experiment.status, 1)

    def verdict(self) -> str:
        exp = self.experiment
        parts = [f"{exp.status:8s}"]
        if exp.val_bpb is not None:
            parts.append(f"val_bpb {exp.val_bpb:.6f}")
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
# Guard

def check_frozen(settings: Settings) -> dict:
    """The workspace's frozen inputs must match the installed harness and the cache; else a clear error."""
    if settings.harness_fingerprint != harness_fingerprint():
        if settings.harness_version == __version__:
            raise WorkspaceError(
                f"the installed autoresearch {__version__} differs from the one this workspace was created with "
                "(same version, other files: an edited installation); results would not be comparable: "
                "reinstall it or init a new workspace")
        if settings.metric_version not in METRIC_VERSIONS:
            raise WorkspaceError(
                f"this workspace scores with metric {settings.metric_version}, which autoresearch {__version__} "
                f"does not know (it knows {', '.join(map(str, METRIC_VERSIONS))}): install a newer version")
    if not settings.data:
        raise WorkspaceError("data not prepared for this workspace: run `autoresearch prepare` first")
    manifest = load_manifest(settings.profile)
    if manifest is None:
        raise WorkspaceError(f"no prepared data for profile {settings.profile.name!r} in the cache: "
                             "run `autoresearch prepare` first")
    pinned = {"data_fingerprint": manifest["data_fingerprint"], "tokenizer_fingerprint": manifest["tokenizer_fingerprint"]}
    if pinned != settings.data:
        raise WorkspaceError("the cached data or tokenizer differ from the ones pinned in autoresearch.toml; "
                             "restore the original cache (AUTORESEARCH_CACHE) or init a new workspace")
    return manifest


def metric_note(settings: Settings) -> str | None:
    """A line for workspaces whose numbers are not comparable with those of a new workspace."""
    if settings.metric_version == METRIC_VERSION:
        return None
    return (f"note: this workspace (made by autoresearch {settings.harness_version or '< 0.2'}) scores with "
            f"metric {settings.metric_version}, kept so its own numbers stay comparable; they are NOT comparable "
            f"with workspaces made now (metric {METRIC_VERSION}: every source sampled in proportion). "
            "Init a new workspace to use it.")


def workspace_branch(root: Path) -> str:
    branch = current_branch(root)
    if branch is None:
        raise WorkspaceError(f"{root} is on a detached HEAD; check out the workspace branch (autoresearch/<tag>)")
    if not branch.startswith("autoresearch/"):
        raise WorkspaceError(f"{root} is on branch {branch!r}, not an autoresearch/<tag> branch; "
                             "check out the workspace branch or start one with `autoresearch init . --tag NAME`")
    return branch


CODE_SUFFIXES = (".py", ".pyc", ".so", ".pth")
HIDING_PLACES = ("runs", "report", ".autoresearch")  # ignored by git, so `git status` would not show them
QUARANTINE = ".autoresearch/quarantine"                # where the loop moves code it found hidden there


def hidden_code(root: Path) -> list[str]:
    """Code files and links in the harness's own ignored folders, where `git status` does not look. The
    walk follows no link: a link is refused itself (it could lead the guard away from what it points at)."""
    found = []
    for folder in HIDING_PLACES:
        for dirpath, dirnames, filenames in os.walk(root / folder):  # os.walk does not follow links
            here = Path(dirpath)
            for name in dirnames + filenames:
                path = here / name
                if path.is_symlink() or (name in filenames and path.suffix in CODE_SUFFIXES):
                    found.append(str(path.relative_to(root)))
    return [p for p in found if not p.startswith(QUARANTINE)]


def out_of_scope(root: Path, frontier: str) -> list[str]:
    """Paths that differ from the frontier (committed, staged, modified or new), other than train.py,
    and code or links hidden where git does not look (the harness's own ignored folders)."""
    changed = git(root, "diff", "--name-only", frontier).splitlines()
    untracked = git(root, "ls-files", "--others", "--exclude-standard").splitlines()
    return sorted({p for p in changed + untracked + hidden_code(root) if p and p != CANDIDATE})


# ---------------------------------------------------------------------------
# The experiment

def start_experiment(settings: Settings, ledger: Ledger, description: str) -> tuple[Experiment, str | None]:
    root = settings.root
    branch = workspace_branch(root)
    frontier = ledger.frontier(branch)
    frontier_commit = frontier.commit if frontier else git(root, "rev-parse", "HEAD")
    if frontier and git(root, "cat-file", "-t", frontier_commit, check=False) != "commit":
        raise WorkspaceError(f"the frontier commit {frontier_commit[:7]} recorded in the ledger is missing from git")
    bar = statistics.fmean(ledger.samples(branch, frontier_commit) or [frontier.val_bpb]) if frontier else None
    exp = Experiment(branch=branch, parent=frontier_commit, description=description, frontier_bpb=bar)
    return exp, frontier_commit


@contextmanager
def session(root: Path, sandbox_mode: str | None):
    """What every command that trains does first: settings, sandbox, the lock, recovery, the frozen checks.
    Yields (settings, ledger, sandbox); the lock is held until the block ends."""
    settings = Settings.load(root)
    box = sandbox.resolve(sandbox_mode)
    with WorkspaceLock(settings.root):
        ledger = Ledger(settings.root)
        for message in recover(settings.root, ledger):
            print(f"recover: {message}", file=sys.stderr)
        check_frozen(settings)
        if note := metric_note(settings):
            print(note, file=sys.stderr)
        if box == "none":
            why = "--sandbox off" if (sandbox_mode or os.environ.get(sandbox.MODE_ENV)) == "off" else sandbox.probe()
            print(f"warning: train.py runs WITHOUT the sandbox ({why}); results are recorded as unenforced: "
                  "tampering is detected after the fact, not prevented (`--sandbox require` refuses to run bare)",
                  file=sys.stderr)
        yield settings, ledger, box


def run_experiment(root: Path, description: str, rule: str = selection.DEFAULT_RULE, meta: dict | None = None,
                   sandbox_mode: str | None = None, noise_runs: int = NOISE_RUNS) -> Outcome:
    """One experiment on the workspace's current train.py; `meta` adds agent fields to its ledger row."""
    if rule not in selection.RULES:
        raise WorkspaceError(f"unknown keep rule {rule!r} (known: {', '.join(selection.RULES)})")
    with session(root, sandbox_mode) as (settings, ledger, box):
        root = settings.root
        if rule == "noise" and ledger.frontier(workspace_branch(root)) is not None:
            from .noise import ensure_noise_floor

            ensure_noise_floor(settings, ledger, noise_runs, box)
        exp, frontier_commit = start_experiment(settings, ledger, description)
        exp.rule, exp.sandbox = rule, box
        for key, value in (meta or {}).items():
            setattr(exp, key, value)

        offending = out_of_scope(root, frontier_commit)
        if offending:
            exp.status, exp.error_class = "rejected", "scope"
            exp.error_excerpt = "only train.py may change; also changed: " + ", ".join(offending[:20])
            exp.reason = "guard: changes outside train.py, nothing was run"
            exp.finished_at = time.time()
            ledger.insert(exp)
            ledger.write_tsv()
            return Outcome(exp, exp.frontier_bpb)

        ledger.insert(exp)
        journal = Journal(root)
        journal.write(id=exp.id, phase="started", frontier=frontier_commit, head=git(root, "rev-parse", "HEAD"))
        try:
            return _run(settings, ledger, exp, journal, rule, box)
        except Interrupted:
            # Ctrl-C: the experiment is recorded as interrupted and the tree goes back to the frontier
            for message in recover(root, ledger, reason="interrupted by the user"):
                print(f"recover: {message}", file=sys.stderr)
            final = ledger.get(exp.id)
            return Outcome(final, final.frontier_bpb)
        except Exception as e:  # disk full, git failure...: undo what we can, say how to finish
            try:
                recover(root, ledger, reason=f"harness error: {e}")
                state = "the experiment was recorded as crashed and the tree reset to the frontier"
            except Exception:  # noqa: BLE001 - still failing (e.g. the disk is still full)
                state = "run `autoresearch recover` once the cause is fixed; nothing has been lost"
            raise WorkspaceError(f"{e} ({state})") from e


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


def _run(settings: Settings, ledger: Ledger, exp: Experiment, journal: Journal, rule: str, box: str) -> Outcome:
    root, frontier_commit = settings.root, exp.parent
    t0 = time.monotonic()

    # Commit: one commit = one experiment
    git(root, "reset", "--quiet", "--soft", frontier_commit)
    git(root, "add", "--", CANDIDATE)
    # no background `git gc --auto`: it would repack refs while train.py runs (and look like tampering)
    git(root, "-c", "gc.auto=0", "commit", "--quiet", "--allow-empty", "-m", exp.description or "(no description)")
    exp.commit = git(root, "rev-parse", "HEAD")
    run_dir = root / "runs" / f"{exp.id:04d}"
    log_path = root / "runs" / f"{exp.id:04d}.log"
    run_dir.mkdir(parents=True, exist_ok=True)
    exp.log_path = str(log_path.relative_to(root))
    ledger.update(exp)
    journal.update(phase="committed", commit=exp.commit, run_dir=str(run_dir))
    pause("committed", journal)

    with _Signals():
        sample = measure(settings, run_dir, log_path, journal, None, box, ledger)
        _record_run(ledger, exp, sample, "experiment")
        _sample_into(exp, sample)
        if sample.status == "ok":
            _decide(settings, ledger, exp, journal, rule, box, sample)
            if exp.status == "keep":
                _score_test(settings, exp, sample, box)
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
        for program in run_dir.parent.glob(f"{exp.id:04d}*/{PROGRAM_FILE}"):
            program.unlink()  # exported weights of discarded runs are not kept
    journal.clear()
    return Outcome(exp, exp.frontier_bpb)


def _decide(settings: Settings, ledger: Ledger, exp: Experiment, journal: Journal, rule: str, box: str,
            first: Sample) -> None:
    """The keep rule on this candidate's samples, with confirmation runs while the rule asks for them."""
    values = [first.val_bpb]
    frontier = ledger.samples(exp.branch, exp.parent) if exp.frontier_bpb is not None else []
    while True:
        noise = selection.pooled_noise(ledger.sample_groups(exp.branch)) if rule == "noise" else None
        decision = selection.decide(values, frontier, rule, noise)
        if decision.verdict != "confirm":
            break
        n = len(values) + 1
        run_dir = settings.root / "runs" / f"{exp.id:04d}-{n}"
        log_path = settings.root / "runs" / f"{exp.id:04d}-{n}.log"
        print(f"confirm: {decision.reason}; confirmation run {n - 1} (seed {DEFAULT_SEED + n - 1}), "
              f"log {log_path.relative_to(settings.root)}", file=sys.stderr)
        journal.update(phase="confirming")
        again = measure(settings, run_dir, log_path, journal, DEFAULT_SEED + n - 1, box, ledger)
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


def _score_test(settings: Settings, exp: Experiment, sample: Sample, box: str) -> None:
    """A kept model is scored on the held-out test split too; it never takes part in a decision."""
    result = evaluate(settings, sample.program, sample.run_dir, "test", box)
    if "error" in result:
        exp.reason += f"; test split not scored ({result['error_class']}: {result['error']})"
    else:
        exp.test_bpb = result["test_bpb"]
