"""One experiment, end to end: guard -> commit -> train -> evaluate -> decide -> record -> keep/reset.

    autoresearch run -m "what I tried"

Every step that changes something is announced in a journal (`.autoresearch/current.json`) before it
happens, so a run killed at any point is finished or undone by `recover()` at the start of the next one.
The workspace lock (an flock, released by the kernel even on SIGKILL) keeps two runs apart.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import procs
from .git import current_branch, git
from .harness.clock import CLOCK_FILE_ENV
from .harness.prepare import load_manifest
from .harness.settings import WORKSPACE_ENV, Settings, harness_fingerprint
from .harness.protocol import EXPORT_ONLY_ENV, PROGRAM_FILE, RUN_DIR_ENV, SUBMIT_MARKER, run_evaluator
from .ledger import Experiment, Ledger
from .recovery import Journal, WorkspaceLock, preserve, recover
from .selection import decide
from .workspace import WorkspaceError

CANDIDATE = "train.py"
POLL_SECONDS = 0.05
EXIT_CODES = {"keep": 0, "discard": 0, "crash": 3, "timeout": 4, "rejected": 5}
LOW_DISK_BYTES = 8 * 2**20
PAUSE_ENV = "AUTORESEARCH_TEST_PAUSE"  # test seam: stop at a named phase so a test can SIGKILL us there


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
        if exp.status in ("crash", "timeout", "rejected") and exp.error_excerpt:
            lines.append(exp.error_excerpt.rstrip())
        return "\n".join(lines)


def _pause(phase: str, journal: Journal) -> None:
    if os.environ.get(PAUSE_ENV) == phase:
        (journal.path.parent / f"paused-{phase}").write_text(str(os.getpid()))
        while True:
            time.sleep(1)


# ---------------------------------------------------------------------------
# Guard

def check_frozen(settings: Settings) -> dict:
    """The workspace's frozen inputs must match the installed harness and the cache; else a clear error."""
    if settings.harness_fingerprint != harness_fingerprint():
        raise WorkspaceError(
            "the installed harness differs from the one this workspace was created with "
            f"(version {settings.harness_version}); results would not be comparable: reinstall that version "
            "or init a new workspace")
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


def workspace_branch(root: Path) -> str:
    branch = current_branch(root)
    if branch is None:
        raise WorkspaceError(f"{root} is on a detached HEAD; check out the workspace branch (autoresearch/<tag>)")
    if not branch.startswith("autoresearch/"):
        raise WorkspaceError(f"{root} is on branch {branch!r}, not an autoresearch/<tag> branch; "
                             "check out the workspace branch or start one with `autoresearch init . --tag NAME`")
    return branch


def out_of_scope(root: Path, frontier: str) -> list[str]:
    """Paths that differ from the frontier (committed, staged, modified or new), other than train.py."""
    changed = git(root, "diff", "--name-only", frontier).splitlines()
    untracked = git(root, "ls-files", "--others", "--exclude-standard").splitlines()
    return sorted({p for p in changed + untracked if p and p != CANDIDATE})


# ---------------------------------------------------------------------------
# Train and evaluate

def parse_summary(log: str) -> dict[str, str]:
    """The `key: value` lines after the last `---` line of a train.py log (informational only)."""
    if "\n---\n" not in log:
        return {}
    block = log.rsplit("\n---\n", 1)[1]
    return {k.strip(): v.strip() for k, v in (l.split(":", 1) for l in block.splitlines() if ":" in l)}


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


CRASH_PATTERNS = [
    ("disk-full", re.compile(r"No space left on device|database or disk is full", re.I)),
    ("syntax", re.compile(r"^(SyntaxError|IndentationError|TabError)\b", re.M)),
    ("import", re.compile(r"^(ModuleNotFoundError|ImportError)\b", re.M)),
    ("nan", re.compile(r"^FAIL: training loss", re.M)),
    ("oom", re.compile(r"OutOfMemoryError|out of memory|^MemoryError\b", re.M | re.I)),
    ("export", re.compile(r"SubmissionError: export", re.M)),
]


def classify_crash(log: str, returncode: int, root: Path | None = None) -> str:
    if root is not None and shutil.disk_usage(root).free < LOW_DISK_BYTES:
        return "disk-full"  # the log itself may not have been writable
    for name, pattern in CRASH_PATTERNS:
        if pattern.search(log):
            return name
    if returncode < 0:
        return "oom" if returncode == -signal.SIGKILL else "signal"
    if "Traceback (most recent call last)" in log:
        return "exception"
    return "no-submit" if returncode == 0 else "exit"


def log_tail(path: Path, lines: int = 20) -> str:
    """The last non-empty lines of a log (progress lines written with \\r count as lines)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    kept = [line for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return "\n".join(kept[-lines:])[-4000:]


@dataclass
class TrainResult:
    exit: procs.Exit
    clock_at: float | None      # harness-observed monotonic times
    submit_at: float | None
    launched_at: float
    ended_at: float = 0.0


def train(settings: Settings, exp: Experiment, run_dir: Path, log_path: Path, journal: Journal) -> TrainResult:
    """Run train.py with the parent holding the clock: start-up cap, budget and hard timeout."""
    root, profile = settings.root, settings.profile
    env = dict(os.environ)
    env.update({WORKSPACE_ENV: str(root), RUN_DIR_ENV: str(run_dir), EXPORT_ONLY_ENV: "1",
                CLOCK_FILE_ENV: str(run_dir / "clock.json"), procs.OWNER_ENV: str(root),
                "PYTHONUNBUFFERED": "1"})
    env.pop(PAUSE_ENV, None)
    launched = time.monotonic()
    proc = procs.spawn([sys.executable, CANDIDATE], root, env, log_path)
    journal.update(phase="training", pgid=proc.pid)
    _pause("training", journal)
    clock_at = submit_at = None
    budget_slack = max(5.0, 0.05 * profile.time_budget)
    try:
        while True:
            now = time.monotonic()
            if clock_at is None and (run_dir / "clock.json").exists():
                clock_at = now
            if submit_at is None and (run_dir / SUBMIT_MARKER).exists():
                submit_at = now
            if (done := procs.poll(proc)) is not None:
                procs.kill_group(proc.pid)  # anything the candidate left behind in its group
                return TrainResult(done, clock_at, submit_at, launched, time.monotonic())
            why = ""
            if now - launched > profile.hard_timeout:
                why = f"hard timeout: still running after {profile.hard_timeout:g}s"
            elif clock_at is None and now - launched > profile.startup_cap:
                why = f"start-up cap: the training clock was not started within {profile.startup_cap:g}s"
            elif clock_at is not None and submit_at is None and now - clock_at > profile.time_budget + budget_slack:
                why = f"budget: still training {now - clock_at:.0f}s after the clock started (budget {profile.time_budget:g}s)"
            if why:
                stopped = procs.stop(proc, why)
                return TrainResult(stopped, clock_at, submit_at, launched, time.monotonic())
            time.sleep(POLL_SECONDS)
    except BaseException:
        procs.stop(proc, "interrupted", grace=2.0)
        raise


# ---------------------------------------------------------------------------
# The experiment

def start_experiment(settings: Settings, ledger: Ledger, description: str) -> tuple[Experiment, str | None]:
    root = settings.root
    branch = workspace_branch(root)
    frontier = ledger.frontier(branch)
    frontier_commit = frontier.commit if frontier else git(root, "rev-parse", "HEAD")
    if frontier and git(root, "cat-file", "-t", frontier_commit, check=False) != "commit":
        raise WorkspaceError(f"the frontier commit {frontier_commit[:7]} recorded in the ledger is missing from git")
    exp = Experiment(branch=branch, parent=frontier_commit, description=description,
                     frontier_bpb=frontier.val_bpb if frontier else None)
    return exp, frontier_commit


def run_experiment(root: Path, description: str, rule: str = "strict", meta: dict | None = None) -> Outcome:
    """One experiment on the workspace's current train.py; `meta` adds agent fields to its ledger row."""
    settings = Settings.load(root)
    root = settings.root
    with WorkspaceLock(root):
        ledger = Ledger(root)
        for message in recover(root, ledger):
            print(f"recover: {message}", file=sys.stderr)
        check_frozen(settings)
        exp, frontier_commit = start_experiment(settings, ledger, description)
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
            return _run(settings, ledger, exp, journal, rule)
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


def _run(settings: Settings, ledger: Ledger, exp: Experiment, journal: Journal, rule: str) -> Outcome:
    root, frontier_commit = settings.root, exp.parent
    t0 = time.monotonic()

    # Commit: one commit = one experiment
    git(root, "reset", "--quiet", "--soft", frontier_commit)
    git(root, "add", "--", CANDIDATE)
    git(root, "commit", "--quiet", "--allow-empty", "-m", exp.description or "(no description)")
    exp.commit = git(root, "rev-parse", "HEAD")
    run_dir = root / "runs" / f"{exp.id:04d}"
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = root / "runs" / f"{exp.id:04d}.log"
    exp.log_path = str(log_path.relative_to(root))
    ledger.update(exp)
    journal.update(phase="committed", commit=exp.commit, run_dir=str(run_dir))
    _pause("committed", journal)

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def on_signal(signum, frame):
        raise Interrupted()

    for s in previous:
        signal.signal(s, on_signal)
    try:
        result = train(settings, exp, run_dir, log_path, journal)
        exp.train_wall_seconds = round(result.ended_at - result.launched_at, 3)
        program = run_dir / PROGRAM_FILE
        log = log_path.read_text(errors="replace") if log_path.exists() else ""
        summary = parse_summary(log)
        exp.steps = int(_float(summary.get("num_steps")) or 0) or None
        exp.params_m = _float(summary.get("num_params_M"))
        exp.mfu_percent = _float(summary.get("mfu_percent"))
        vram = _float(summary.get("peak_vram_mb"))
        exp.memory_gb = round((vram if vram is not None else result.exit.max_rss_mb) / 1024, 3)
        if result.clock_at is not None:
            end = result.submit_at if result.submit_at is not None else time.monotonic()
            exp.training_seconds = round(end - result.clock_at, 2)

        if result.exit.stopped_by:
            exp.status, exp.error_class = "timeout", result.exit.stopped_by.split(":")[0].replace(" ", "-")
            exp.error_excerpt = result.exit.stopped_by + "\n" + log_tail(log_path)
        elif result.exit.returncode != 0 or not program.exists() or result.submit_at is None:
            exp.status, exp.error_class = "crash", classify_crash(log, result.exit.returncode, root)
            exp.error_excerpt = log_tail(log_path)
        else:
            journal.update(phase="evaluating")
            _pause("evaluating", journal)
            t_eval = time.monotonic()
            evaluation = run_evaluator(program, root, run_dir, timeout=settings.profile.hard_timeout,
                                       env={procs.OWNER_ENV: str(root)})
            exp.eval_wall_seconds = round(time.monotonic() - t_eval, 3)
            if "error" in evaluation:
                exp.status, exp.error_class = "crash", evaluation["error_class"]
                exp.error_excerpt = evaluation["error"]
            else:
                exp.val_bpb = evaluation["val_bpb"]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)

    if exp.status == "running":
        decision = decide(exp.val_bpb, exp.frontier_bpb, rule)
        exp.status, exp.reason = ("keep" if decision.keep else "discard"), decision.reason
    else:
        exp.reason = exp.reason or f"{exp.status}: {exp.error_class}"
    exp.total_seconds = round(time.monotonic() - t0, 2)
    exp.finished_at = time.time()

    journal.update(phase="recording")
    _pause("recording", journal)
    ledger.update(exp)
    journal.update(phase="recorded", status=exp.status)

    if exp.status != "keep":
        _pause("resetting", journal)
        preserve(root, exp)
        git(root, "reset", "--quiet", "--hard", frontier_commit)
        if (run_dir / PROGRAM_FILE).exists():
            (run_dir / PROGRAM_FILE).unlink()  # exported weights of discarded runs are not kept
    journal.clear()
    return Outcome(exp, exp.frontier_bpb)
