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
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import layout, procs, sandbox, tripwire
from . import task as tasks
from .guard import Session
from .harness.clock import CLOCK_FILE_ENV, TRAINING_ENDS_ENV
from .harness.device import PEAK_FLOPS_ENV
from .harness.paths import CACHE_ENV, cache_dir
from .harness.protocol import (EXPORT_ONLY_ENV, INTEGRITY_ERRORS, RUN_DIR_ENV, SEED_ENV, SUBMIT_MARKER, TestAhead,
                               evaluator_env, run_evaluator, run_evaluator_ahead)
from .harness.settings import WORKSPACE_ENV
from .logs import classify_crash, log_tail, number, parse_summary

POLL_SECONDS = 0.05
PAUSE_ENV = "AUTORESEARCH_TEST_PAUSE"  # test seam: stop at a named phase so a test can SIGKILL us there


# What train.py may see of the harness's environment: the interpreter's, the toolchain's and the accelerator's.
# Of autoresearch's own variables only the peak-FLOPS setting: the ones a run needs (its folder, the cache, the
# clock, the seed...) are set by the harness itself, and the others are the user's (an agent's model, a task
# grader's key). Anything else (an agent's API key, a cloud token) stays with the parent.
ENV_NAMES = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TERM", "TMPDIR", "SHELL",
                       "PYTHONPATH", "PYTHONHASHSEED", "VIRTUAL_ENV", "CONDA_PREFIX", "LD_LIBRARY_PATH",
                       "CC", "CXX", "CUDA_HOME", "CUDA_PATH", "XDG_CACHE_HOME",
                       "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HUGGINGFACE_HUB_CACHE", PEAK_FLOPS_ENV})
ENV_PREFIXES = ("LC_", "CUDA_", "NVIDIA_", "TORCH", "PYTORCH_", "TRITON_", "NCCL_", "OMP_", "MKL_", "KMP_", "OPENBLAS_")


def candidate_env(environ) -> dict:
    """The part of `environ` that train.py gets (an allowlist: ENV_NAMES and ENV_PREFIXES)."""
    return {k: v for k, v in environ.items() if k in ENV_NAMES or k.startswith(ENV_PREFIXES)}


def pause(phase: str, journal) -> None:
    if os.environ.get(PAUSE_ENV) == phase:
        (journal.path.parent / f"paused-{phase}").write_text(str(os.getpid()))
        while True:
            time.sleep(1)


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


def train(s: Session, run_dir: Path, log_path: Path, journal, seed: int | None) -> Watch:
    """Run train.py (sandboxed when the session's sandbox is "bwrap") with the parent holding every clock."""
    root, profile, rules = s.root, s.profile, s.profile.time_rules
    env = candidate_env(os.environ)
    env.update({WORKSPACE_ENV: str(root), RUN_DIR_ENV: str(run_dir), EXPORT_ONLY_ENV: "1",
                CACHE_ENV: str(cache_dir()),  # the sandbox's HOME is its own: name the data's place
                CLOCK_FILE_ENV: str(run_dir / "clock.json"), procs.OWNER_ENV: str(root),
                "PYTHONUNBUFFERED": "1"})
    env.pop(PAUSE_ENV, None)
    env.pop(SEED_ENV, None)
    if seed is not None:
        env[SEED_ENV] = str(seed)
    cmd = [sys.executable, layout.CANDIDATE]
    if s.sandbox == "bwrap":
        cmd = sandbox.train_command(cmd, root, run_dir, profile.name, profile.dataset, env)
    watch = Watch(launched_at=time.monotonic())
    env[TRAINING_ENDS_ENV] = repr(watch.launched_at + rules.training_ends)  # the same clock inside the sandbox
    proc = procs.spawn(cmd, root, env, log_path)
    memory = procs.TreeMemory(proc.pid)
    journal.update(phase="training", pgid=proc.pid)
    pause("training", journal)
    program = run_dir / layout.EXPORTED_MODEL

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
    test_ahead: TestAhead | None = field(default=None, repr=False)  # measure(test_ahead=True): the test split, scoring

    @property
    def program(self) -> Path:
        return self.run_dir / layout.EXPORTED_MODEL

    def cancel_test(self) -> None:
        """Stop the test split's scoring started ahead, if any (the model is not kept, or more runs follow)."""
        if self.test_ahead is not None:
            self.test_ahead.cancel()
            self.test_ahead = None

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


def evaluate(s: Session, program: Path, out: Path, split: str) -> dict:
    """The frozen evaluator on an exported model, in its own (sandboxed) process: {"<split>_bpb": ...} or
    {"error": ..., "error_class": ...}. A task's evaluator scores the run folder `out` (evaluate_task)."""
    if not s.task.is_gpt:
        return evaluate_task(s, out, split)
    return run_evaluator(program, s.root, out, split=split, **_evaluator_options(s, out))


def evaluate_ahead(s: Session, program: Path, out: Path) -> tuple[dict, TestAhead | None]:
    """`evaluate` on the val split, the same process going on to score the test split (run_evaluator_ahead)."""
    return run_evaluator_ahead(program, s.root, out, **_evaluator_options(s, out))


def _evaluator_options(s: Session, out: Path) -> dict:
    """The evaluator's timeout, its owner marker, and its sandbox when the session has one."""
    def wrap(cmd, env):
        return sandbox.eval_command(cmd, out, env, workspace=s.root, profile_name=s.profile.name)

    return {"timeout": s.profile.time_rules.eval_timeout, "env": {procs.OWNER_ENV: str(s.root)},
            "wrap": wrap if s.sandbox == "bwrap" else None}


def measure(s: Session, run_dir: Path, log_path: Path, journal, seed: int | None, test_ahead: bool = False) -> Sample:
    """Train once, check the rules, score on the validation split. The session's ledger is reopened if
    train.py damaged it (the tripwire restores it). A task's run: measure_task. `test_ahead`: the evaluator
    goes on to score the test split after val, in the same process (sample.test_ahead: the caller takes its
    result or cancels it)."""
    if not s.task.is_gpt:
        return measure_task(s, run_dir, log_path, journal, seed)
    root, profile = s.root, s.profile
    sample = Sample(seed, run_dir, log_path, sandbox=s.sandbox)
    run_dir.mkdir(parents=True, exist_ok=True)
    scope = tripwire.Scope(root, profile.name, profile.dataset, ignore=(journal.path, layout.state(root, layout.LOCK)),
                           ledger=s.ledger)
    s.ledger.checkpoint()  # keep the write-ahead log short; the snapshot reads through the connection
    before = tripwire.take(scope)
    watch = train(s, run_dir, log_path, journal, seed)
    procs.kill_owned(root)  # anything train.py started that left its process group (outside a sandbox)
    journal.write(**journal.data)  # the journal is the parent's: rewrite it whatever happened to the file

    sample.train_wall_seconds = round(watch.ended_at - watch.launched_at, 3)
    sample.memory_gb = round(watch.memory_mb / 1024, 3)  # measured by the parent, whatever train.py printed
    log = log_path.read_text(errors="replace") if log_path.exists() else ""
    summary = parse_summary(log)  # as reported by train.py
    sample.steps = int(number(summary.get("num_steps")) or 0) or None
    sample.params_m = number(summary.get("num_params_M"))
    sample.mfu_percent = number(summary.get("mfu_percent"))
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
    if test_ahead:
        result, sample.test_ahead = evaluate_ahead(s, sample.program, run_dir)
    else:
        result = evaluate(s, sample.program, run_dir, "val")
    sample.eval_wall_seconds = round(time.monotonic() - t_eval, 3)
    if "error" in result:
        status = "invalid" if result["error_class"] in INTEGRITY_ERRORS else "crash"
        return sample.fail(status, result["error_class"], result["error"])
    sample.val_bpb = result["val_bpb"]
    return sample


# ---------------------------------------------------------------------------
# A task's run and its score (task.py): the same watch, the same tripwire, the task's own rules
#
#   deadline   launch -> the run has exited      by start-up + budget, else interrupted there: timeout (budget)
#   evaluation start  -> the evaluator's result  within the task's eval_timeout, else crash (eval-timeout)
#
# The evaluator is frozen code of the task: when it fails (exits non-zero, writes no result or garbage) the
# task is broken, not the candidate: TaskError, and the experiment is undone (experiment.py).

def run_task(s: Session, run_dir: Path, log_path: Path, journal, seed: int | None) -> Watch:
    """The task's `run` command (sandboxed when the session's sandbox is "bwrap"), the parent holding the clock."""
    root, task = s.root, s.task
    env = candidate_env(os.environ)
    env.update({tasks.RUN_DIR_ENV: str(run_dir), tasks.DATA_ENV: str(task.data_dir()), WORKSPACE_ENV: str(root),
                CACHE_ENV: str(cache_dir()), procs.OWNER_ENV: str(root), "PYTHONUNBUFFERED": "1"})
    env.pop(PAUSE_ENV, None)
    env.pop(SEED_ENV, None)
    for name in task.private_env:  # the grader's URL and key are the evaluator's, never the run's
        env.pop(name, None)
    if seed is not None:
        env[SEED_ENV] = str(seed)
    cmd = list(task.run)
    if s.sandbox == "bwrap":
        files = sorted(set(task.editable_files(root)) | set(task.readable_files(root)))
        cmd = sandbox.task_run_command(cmd, root, run_dir, files, task.data_dir(), task.conceal, env)
    watch = Watch(launched_at=time.monotonic())
    proc = procs.spawn(cmd, root, env, log_path)
    memory = procs.TreeMemory(proc.pid)
    journal.update(phase="training", pgid=proc.pid)
    pause("training", journal)
    grace = max(0.5, min(procs.GRACE_SECONDS, task.hard_timeout - task.deadline))
    try:
        while True:
            now = time.monotonic()
            memory.sample(now)
            if (done := procs.poll(proc)) is not None:
                procs.kill_group(proc.pid)
                exit = done
                break
            if now - watch.launched_at > task.deadline:
                watch.violation = (f"budget: still running {task.deadline:g}s after launch (start-up allowance "
                                   f"{task.startup:g}s + budget {task.budget:g}s)")
                exit = procs.stop(proc, watch.violation, grace=grace)
                break
            time.sleep(POLL_SECONDS)
    except BaseException:
        procs.stop(proc, "interrupted", grace=2.0)
        raise
    watch.exit, watch.ended_at = exit, time.monotonic()
    watch.memory_mb = memory.peak_mb(exit.max_rss_mb)
    return watch


def measure_task(s: Session, run_dir: Path, log_path: Path, journal, seed: int | None) -> Sample:
    """Run the task once, check the rules, score on the search split (val)."""
    root, task = s.root, s.task
    sample = Sample(seed, run_dir, log_path, sandbox=s.sandbox)
    run_dir.mkdir(parents=True, exist_ok=True)
    scope = tripwire.Scope(root, "", "", ignore=(journal.path, layout.state(root, layout.LOCK)), ledger=s.ledger,
                           data=(task.data_dir(),))
    s.ledger.checkpoint()
    before = tripwire.take(scope)
    watch = run_task(s, run_dir, log_path, journal, seed)
    procs.kill_owned(root)
    journal.write(**journal.data)

    sample.train_wall_seconds = sample.training_seconds = round(watch.ended_at - watch.launched_at, 3)
    sample.memory_gb = round(watch.memory_mb / 1024, 3)
    log = log_path.read_text(errors="replace") if log_path.exists() else ""
    if tampered := tripwire.changes(before, scope):
        sample.restored = tripwire.restore(before, scope, run_dir)
        return sample.fail("invalid", "tamper", "the run changed protected files: " + "; ".join(tampered[:20])
                           + ("\n" + "; ".join(sample.restored) if sample.restored else ""))
    if watch.violation:
        return sample.fail("timeout", "budget", watch.violation + "\n" + log_tail(log_path))
    if watch.exit.returncode != 0:
        return sample.fail("crash", classify_crash(log, watch.exit.returncode, root), log_tail(log_path))

    journal.update(phase="evaluating")
    pause("evaluating", journal)
    t_eval = time.monotonic()
    result = evaluate_task(s, run_dir, "val")
    sample.eval_wall_seconds = round(time.monotonic() - t_eval, 3)
    if "error" in result:
        return sample.fail("invalid" if result["error_class"] == "wrong" else "crash", result["error_class"],
                           result["error"])
    sample.val_bpb = result["val_bpb"]
    sample.note = ", ".join(f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in result["metrics"].items())
    return sample


def evaluate_task(s: Session, run_dir: Path, split: str) -> dict:
    """The task's frozen evaluator on one run, in a fresh (sandboxed) process that sees the run folder and a
    copy of the editable files (the network and the task's own variables too, when its task.toml asks):
    {"<split>_bpb": metric, "metrics": {...}} (the ledger's column names), or {"error", "error_class"}:
    "wrong" when the evaluator judged the output incorrect (invalid), "eval-timeout".
    TaskError when the evaluator itself failed (a broken task, not a bad candidate)."""
    root, task = s.root, s.task
    with tempfile.TemporaryDirectory(prefix="autoresearch-task-eval-", ignore_cleanup_errors=True) as tmp:
        home = Path(tmp)
        candidate, out = home / "candidate", home / "out"
        out.mkdir()
        for name in task.editable_files(root):  # checked unchanged by the tripwire: what ran
            (candidate / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / name, candidate / name)
        candidate.mkdir(exist_ok=True)
        result_path = out / tasks.RESULT_FILE
        env = evaluator_env(home, task.evaluator_env(os.environ) | {
            procs.OWNER_ENV: str(root), tasks.DATA_ENV: str(task.data_dir()), tasks.RUN_DIR_ENV: str(run_dir),
            tasks.CANDIDATE_ENV: str(candidate), tasks.SPLIT_ENV: split, tasks.RESULT_ENV: str(result_path)})
        cmd = list(task.evaluate)
        if cmd[0] == sys.executable:
            cmd.insert(1, "-I")  # no script folder, no user site, no PYTHON* variables on its path
        if s.sandbox == "bwrap":
            cmd = sandbox.task_eval_command(cmd, root, task.data_dir(), candidate, out, env,
                                             network=task.evaluate_network)
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=task.eval_timeout,
                                  cwd=root, stdin=subprocess.DEVNULL, start_new_session=True)
        except subprocess.TimeoutExpired:
            return {"error_class": "eval-timeout",
                    "error": f"the evaluator did not finish within {task.eval_timeout:g}s"}
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        if proc.returncode != 0:
            raise tasks.TaskError(f"the task's evaluator ({' '.join(task.evaluate[1:])}) failed with exit "
                                  f"{proc.returncode}: {tail or 'no output'}")
        if not result_path.is_file() or result_path.is_symlink():
            raise tasks.TaskError(f"the task's evaluator wrote no result to ${tasks.RESULT_ENV}"
                                  + (f": {tail}" if tail else ""))
        text = result_path.read_text(errors="replace")
    record = run_dir / f"eval-{split}.json"
    if record.is_symlink() or record.exists():  # whatever the run left there is replaced, never followed
        shutil.rmtree(record) if record.is_dir() and not record.is_symlink() else record.unlink()
    record.write_text(text)
    result = tasks.parse_result(text)
    if not result["valid"]:
        return {"error_class": "wrong", "error": f"the evaluator judged the output wrong: {result['reason']}"}
    return {f"{split}_bpb": result["metric"], "metrics": result["metrics"]}
