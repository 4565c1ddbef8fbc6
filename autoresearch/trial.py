"""One training run of the workspace's train.py and its out-of-process score: a sample of val_bpb.

An experiment is one or two of these (a confirmation run when the result is inside the noise band); the
noise floor is K of them on unchanged code. The parent holds every clock, counts every rule from the
launch of train.py, and trusts no number or file train.py writes (rules: `profile.time_rules`, clock.py):

  the window   launch -> start-up allowance + budget       train.py's clock says stop (its own business)
  deadline     launch -> the exported model appears        by start-up + budget + export allowance,
                                                           else stopped there: invalid (budget)
  exit         model  -> the process exits                 within the exit grace, then stopped (the model
                                                           saved first is still what gets scored)
  everything   launch -> exit                              within deadline + exit grace, else timeout
  evaluation   start  -> the evaluator's result            within the evaluation timeout, else crash

Set-up before `start_clock()` and work after `submit()` are time taken from training, never added to it:
the markers train.py writes (the clock file, `submitted`) are read only to record start-up, training and
export seconds. The exported model must not change after it first appears (a second export after more
training is caught), and nothing protected may change while train.py runs (tripwire.py). Graph and
causality failures found by the evaluator are integrity failures too: `invalid`, not `crash`.

What is recorded: memory_gb is the harness's own measurement of the process tree (procs.TreeMemory);
steps, params and MFU are as train.py reported them in its summary block (labelled so wherever shown).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import procs, sandbox, tripwire
from .harness.clock import CLOCK_FILE_ENV, TRAINING_ENDS_ENV
from .harness.protocol import (EXPORT_ONLY_ENV, PROGRAM_FILE, RUN_DIR_ENV, SEED_ENV, SUBMIT_MARKER,
                               run_evaluator)
from .harness.settings import WORKSPACE_ENV, Settings

CANDIDATE = "train.py"
POLL_SECONDS = 0.05
LOW_DISK_BYTES = 8 * 2**20
PAUSE_ENV = "AUTORESEARCH_TEST_PAUSE"  # test seam: stop at a named phase so a test can SIGKILL us there
from .harness.protocol import INTEGRITY_ERRORS as INTEGRITY  # noqa: E402 - evaluator failures: the model breaks the contract


def pause(phase: str, journal) -> None:
    if os.environ.get(PAUSE_ENV) == phase:
        (journal.path.parent / f"paused-{phase}").write_text(str(os.getpid()))
        while True:
            time.sleep(1)


# ---------------------------------------------------------------------------
# Logs

def parse_summary(log: str) -> dict[str, str]:
    """The `key: value` lines after the last `---` line of a train.py log: what train.py reports about itself
    (steps, params, MFU), recorded as reported; no decision and no harness figure is taken from it."""
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


def log_tail(path: Path, lines: int = 20, *, blank: bool = False, chars: int | None = 4000) -> str:
    """The last lines of a log (progress lines written with \\r count as lines). An error excerpt (the default)
    skips blank lines and keeps at most `chars` characters; `autoresearch show` asks for the lines as written."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    kept = [line for line in text.splitlines() if blank or line.strip()]  # splitlines breaks at \r too
    tail = "\n".join(kept[-lines:])
    return tail if chars is None else tail[-chars:]


# ---------------------------------------------------------------------------
# Training, watched from outside

@dataclass
class Watch:
    """What the parent saw of one train.py process, on its own monotonic clock. The marker times are when
    train.py's files appeared: information, never a rule."""
    exit: procs.Exit | None = None
    launched_at: float = 0.0
    clock_at: float | None = None     # the clock file appeared (train.py called start_clock())
    submit_at: float | None = None    # the `submitted` marker appeared (train.py called submit())
    program_at: float | None = None   # the exported model appeared
    program_sig: tuple | None = None
    ended_at: float = 0.0
    memory_mb: float = 0.0            # peak memory of the process tree, measured by the parent
    violation: str = ""   # a broken time rule: "budget: ..."
    lingered: str = ""    # stopped after its model was saved


def _signature(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def train(settings: Settings, run_dir: Path, log_path: Path, journal, seed: int | None, box: str) -> Watch:
    """Run train.py (sandboxed when `box` is "bwrap") with the parent holding every clock."""
    root, profile, rules = settings.root, settings.profile, settings.profile.time_rules
    env = dict(os.environ)
    env.update({WORKSPACE_ENV: str(root), RUN_DIR_ENV: str(run_dir), EXPORT_ONLY_ENV: "1",
                CLOCK_FILE_ENV: str(run_dir / "clock.json"), procs.OWNER_ENV: str(root),
                "PYTHONUNBUFFERED": "1"})
    env.pop(PAUSE_ENV, None)
    env.pop(SEED_ENV, None)
    if seed is not None:
        env[SEED_ENV] = str(seed)
    cmd = [sys.executable, CANDIDATE]
    if box == "bwrap":
        cmd = sandbox.train_command(cmd, root, run_dir, profile.name, profile.dataset, env)
    watch = Watch(launched_at=time.monotonic())
    env[TRAINING_ENDS_ENV] = repr(watch.launched_at + rules.training_ends)  # the same clock inside the sandbox
    proc = procs.spawn(cmd, root, env, log_path)
    memory = procs.TreeMemory(proc.pid)
    journal.update(phase="training", pgid=proc.pid)
    pause("training", journal)
    program = run_dir / PROGRAM_FILE

    def end(exit: procs.Exit) -> Watch:
        watch.exit, watch.ended_at = exit, time.monotonic()
        watch.memory_mb = memory.peak_mb(exit.max_rss_mb)
        return watch

    try:
        while True:
            now = time.monotonic()
            if watch.clock_at is None and (run_dir / "clock.json").exists():
                watch.clock_at = now
            if watch.submit_at is None and (run_dir / SUBMIT_MARKER).exists():
                watch.submit_at = now
            if watch.program_at is None and (sig := _signature(program)) is not None:
                watch.program_at, watch.program_sig = now, sig
            memory.sample(now)
            if (done := procs.poll(proc)) is not None:
                procs.kill_group(proc.pid)  # anything the candidate left behind in its group
                return end(done)
            why, since_launch = "", now - watch.launched_at
            if since_launch > rules.hard_timeout:
                why = f"hard timeout: still running {rules.hard_timeout:g}s after launch"
            elif watch.program_at is None and since_launch > rules.deadline:
                why = watch.violation = (
                    f"budget: no exported model {rules.deadline:g}s after launch (start-up allowance "
                    f"{rules.startup:g}s + budget {rules.budget:g}s + export allowance {rules.export:g}s)")
            elif watch.program_at is not None and now - watch.program_at > rules.exit_grace:
                why = watch.lingered = f"still running {rules.exit_grace:g}s after its model was saved"
            if why:
                return end(procs.stop(proc, why))
            time.sleep(POLL_SECONDS)
    except BaseException:
        procs.stop(proc, "interrupted", grace=2.0)
        raise


# ---------------------------------------------------------------------------
# One sample

@dataclass
class Sample:
    seed: int | None
    run_dir: Path
    log_path: Path
    sandbox: str = "none"
    status: str = "ok"          # ok | crash | timeout | invalid
    error_class: str = ""
    error_excerpt: str = ""
    note: str = ""
    val_bpb: float | None = None
    memory_gb: float | None = None
    steps: int | None = None
    params_m: float | None = None
    mfu_percent: float | None = None
    training_seconds: float | None = None
    startup_seconds: float | None = None
    export_seconds: float | None = None
    train_wall_seconds: float | None = None
    eval_wall_seconds: float | None = None
    restored: list[str] = field(default_factory=list)

    @property
    def program(self) -> Path:
        return self.run_dir / PROGRAM_FILE

    def fail(self, status: str, error_class: str, excerpt: str) -> "Sample":
        self.status, self.error_class, self.error_excerpt = status, error_class, excerpt
        return self


def _marker_seconds(watch: Watch) -> tuple[float | None, float | None, float | None]:
    """Start-up, training and export seconds as train.py's markers divide its run (information only: a
    marker moves no rule). Start-up: launch to the clock file; training: the clock file to the `submitted`
    marker (or the model); export: the marker to the model."""
    def seconds(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round(max(0.0, b - a), 2)

    clock = watch.clock_at
    stop = next((t for t in (watch.submit_at, watch.program_at, watch.ended_at) if t is not None), None)
    return (seconds(watch.launched_at, clock), seconds(clock, stop), seconds(watch.submit_at, watch.program_at))


def evaluate(settings: Settings, program: Path, out: Path, split: str, box: str) -> dict:
    wrap = (lambda cmd, env: sandbox.eval_command(cmd, out, env)) if box == "bwrap" else None
    return run_evaluator(program, settings.root, out, split=split, timeout=settings.profile.time_rules.eval_timeout,
                         env={procs.OWNER_ENV: str(settings.root)}, wrap=wrap)


def measure(settings: Settings, run_dir: Path, log_path: Path, journal, seed: int | None, box: str,
            ledger=None) -> Sample:
    """Train once, check the rules, score on the validation split. `ledger` is reopened if restored."""
    root, profile = settings.root, settings.profile
    sample = Sample(seed, run_dir, log_path, sandbox=box)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = root / ".autoresearch"
    scope = tripwire.Scope(root, profile.name, profile.dataset, ignore=(journal.path, state / "lock"),
                           ledger=ledger)
    if ledger is not None:
        ledger.checkpoint()  # keep the write-ahead log short; the snapshot reads through the connection
    before = tripwire.take(scope)
    try:
        watch = train(settings, run_dir, log_path, journal, seed, box)
    finally:
        shutil.rmtree(run_dir / "tmp", ignore_errors=True)  # the sandbox's private temp dir
    procs.kill_owned(root)  # anything train.py started that left its process group (outside a sandbox)
    journal.write(**journal.data)  # the journal is the parent's: rewrite it whatever happened to the file

    sample.train_wall_seconds = round(watch.ended_at - watch.launched_at, 3)
    sample.memory_gb = round(watch.memory_mb / 1024, 3)  # measured by the parent, whatever train.py printed
    log = log_path.read_text(errors="replace") if log_path.exists() else ""
    summary = parse_summary(log)  # as reported by train.py
    sample.steps = int(_float(summary.get("num_steps")) or 0) or None
    sample.params_m = _float(summary.get("num_params_M"))
    sample.mfu_percent = _float(summary.get("mfu_percent"))
    sample.startup_seconds, sample.training_seconds, sample.export_seconds = _marker_seconds(watch)

    if tampered := tripwire.changes(before, scope):
        sample.restored = tripwire.restore(before, scope, run_dir)
        return sample.fail("invalid", "tamper", "train.py changed protected files: " + "; ".join(tampered[:20])
                           + ("\n" + "; ".join(sample.restored) if sample.restored else ""))
    if watch.violation:
        kind = watch.violation.split(":")[0].replace(" ", "-")
        return sample.fail("invalid", kind, watch.violation + "\n" + log_tail(log_path))
    if watch.exit.stopped_by and not watch.lingered:
        return sample.fail("timeout", "hard-timeout", watch.exit.stopped_by + "\n" + log_tail(log_path))
    if watch.program_sig is not None and _signature(sample.program) != watch.program_sig:
        return sample.fail("invalid", "resubmitted", "the exported model changed after it was first saved "
                           "(exported again after more training?)")
    if watch.lingered:
        sample.note = f"stopped: {watch.lingered}; the model saved at submit was scored"
    elif watch.exit.returncode != 0 or watch.program_at is None:
        return sample.fail("crash", classify_crash(log, watch.exit.returncode, root), log_tail(log_path))
    if watch.program_at is None:
        return sample.fail("crash", "no-submit", log_tail(log_path))

    journal.update(phase="evaluating")
    pause("evaluating", journal)
    t_eval = time.monotonic()
    result = evaluate(settings, sample.program, run_dir, "val", box)
    sample.eval_wall_seconds = round(time.monotonic() - t_eval, 3)
    if "error" in result:
        status = "invalid" if result["error_class"] in INTEGRITY else "crash"
        return sample.fail(status, result["error_class"], result["error"])
    sample.val_bpb = result["val_bpb"]
    return sample
