"""What train.py's process, the parent harness and the evaluator agree on: environment, files, the call.

Kept free of torch so the parent (`autoresearch run`) starts fast and never loads model code itself.

The evaluator runs isolated from anything the candidate wrote: `python -I` (no PYTHONPATH, no user
variables, no script or working folder on sys.path), in a fresh empty folder the parent makes (its working
folder, HOME and TMPDIR), with an environment built from an allowlist. The parent names the package to
import (the one it runs itself) and its fingerprint; the evaluator checks it before scoring.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .paths import CACHE_ENV, cache_dir
from .settings import PACKAGE_DIR, harness_fingerprint

RUN_DIR_ENV = "AUTORESEARCH_RUN_DIR"          # where submit() writes the exported model
EXPORT_ONLY_ENV = "AUTORESEARCH_EXPORT_ONLY"  # set by the parent: it scores the model itself
PROGRAM_FILE = "model.pt2"
SUBMIT_MARKER = "submitted"                   # written when submit() is called: the clock stops
SEED_ENV = "AUTORESEARCH_SEED"                # set by the harness when it repeats a run with another seed
DEFAULT_SEED = 42

# Evaluator failures that mean the model (or what scored it) broke the contract: `invalid`, not `crash`.
INTEGRITY_ERRORS = frozenset({"archive", "graph", "shape", "causality", "harness"})

# What the evaluator inherits from the parent's environment; everything else is dropped (PYTHON*, LD_PRELOAD,
# TORCH_*, the harness's own test seams...). LD_LIBRARY_PATH stays: some machines find CUDA only through it.
EVAL_ENV_KEEP = ("PATH", "LANG", "LANGUAGE", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES",
                 "LD_LIBRARY_PATH")
EVAL_ENV_PREFIXES = ("LC_",)
# Set for the evaluator by the harness itself. A batch's logits are tens of MB; the C allocator hands such a
# block back to the kernel when it is freed, so every forward pass faulted its memory in again, 4 KiB at a time:
# on CPU a third of the evaluation (2.0 M page faults for the cpu profile's 16 forward passes). PyTorch's own
# switch puts blocks over 2 MiB on transparent huge pages (madvise): 10x fewer faults, the cpu profile's
# evaluation 16 s -> 10 s, the same peak memory and the same numbers (only where memory comes from changes).
# Where the kernel has huge pages off it changes nothing.
EVAL_ENV_SET = {"THP_MEM_ALLOC_ENABLE": "1"}
# `python -I -c BOOT ROOTS ...`: the package's folder goes on sys.path last (never before the stdlib or
# site-packages), then the evaluator runs with the remaining arguments.
BOOT = ("import os, sys; sys.path.extend(sys.argv.pop(1).split(os.pathsep)); "
        "from autoresearch.harness.evaluate import main; sys.exit(main())")


def evaluator_env(home: Path, extra: dict | None = None) -> dict:
    """The evaluator's whole environment: the allowlist, HOME and TMPDIR in `home`, the data cache the
    parent uses, and `extra` (the caller's own, e.g. the owner marker)."""
    env = {k: v for k, v in os.environ.items() if k in EVAL_ENV_KEEP or k.startswith(EVAL_ENV_PREFIXES)}
    env.update(HOME=str(home), TMPDIR=str(home), **{CACHE_ENV: str(cache_dir())})
    return env | (extra or {})


def import_roots() -> list[str]:
    """Where the evaluator finds the package the parent runs: its parent folder, and the user's
    site-packages when this interpreter uses them (isolated mode would skip them)."""
    roots = [str(PACKAGE_DIR.parent)]
    if site.ENABLE_USER_SITE and site.getusersitepackages() in sys.path:
        roots.append(site.getusersitepackages())
    return roots


def evaluator_command(program: Path, workspace: Path, result: Path, split: str, then_test: Path | None = None) -> list[str]:
    return [sys.executable, "-I", "-c", BOOT, os.pathsep.join(import_roots()), "--program", str(program),
            "--workspace", str(workspace), "--split", split, "--out", str(result),
            "--expect-fingerprint", harness_fingerprint(), *(["--then-test", str(then_test)] if then_test else [])]


def _remove(path: Path) -> None:
    """Whatever the candidate left at `path` (a file, a link, a folder) is removed, never followed."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _clear(result: Path) -> None:
    """A result file and its half-written twin, whatever was left there."""
    for path in (result, result.with_name(result.name + ".tmp")):
        _remove(path)


def _timed_out(timeout: float | None) -> dict:
    return {"error_class": "eval-timeout", "error": f"the evaluator did not finish within {timeout:g}s"}


def _result(path: Path, stderr: str) -> dict:
    if not path.is_file() or path.is_symlink():
        tail = stderr.strip().splitlines()[-5:]
        return {"error_class": "eval", "error": "the evaluator died: " + " | ".join(tail)}
    return json.loads(path.read_text())


class TestAhead:
    """The test split of a model, being scored by the evaluator process that scored its val split (started
    with --then-test): `result()` waits for it, `cancel()` stops it and removes what it wrote. One or the
    other must be called; the parent calls `cancel()` unless the model is kept, before anything else runs."""

    def __init__(self, proc: subprocess.Popen, home: Path, path: Path, stderr: Path):
        self.proc, self.home, self.path, self.stderr = proc, home, path, stderr

    def result(self, timeout: float | None = None) -> dict:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.cancel()
            return _timed_out(timeout)
        except BaseException:  # interrupted while waiting: nothing of it outlives the parent's wait
            self.cancel()
            raise
        try:
            return _result(self.path, self.stderr.read_text(errors="replace"))
        finally:
            shutil.rmtree(self.home, ignore_errors=True)

    def cancel(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.proc.wait()
        _clear(self.path)
        shutil.rmtree(self.home, ignore_errors=True)


def run_evaluator_ahead(program: Path, workspace: Path, out: Path, timeout: float | None = None,
                        env: dict | None = None, wrap=None) -> tuple[dict, TestAhead | None]:
    """As run_evaluator on the val split, returning as soon as the val result is written, with the same
    process going on to score the test split: (the val result, its TestAhead), or (an error, None)."""
    val_path, test_path = out / "eval-val.json", out / "eval-test.json"
    _clear(val_path)
    _clear(test_path)
    home = Path(tempfile.mkdtemp(prefix="autoresearch-eval-"))
    clean = evaluator_env(home, env) | EVAL_ENV_SET
    cmd = evaluator_command(program, workspace, val_path, "val", then_test=test_path)
    if wrap is not None:
        cmd = wrap(cmd, clean)
    stderr = home / "evaluator.stderr"
    with open(stderr, "w") as err:
        proc = subprocess.Popen(cmd, env=clean, stdout=subprocess.DEVNULL, stderr=err, cwd=home,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    ahead = TestAhead(proc, home, test_path, stderr)
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while not val_path.exists() and proc.poll() is None:  # written by a rename: complete when it exists
            if deadline is not None and time.monotonic() > deadline:
                ahead.cancel()
                return _timed_out(timeout), None
            time.sleep(0.02)
    except BaseException:
        ahead.cancel()
        raise
    result = _result(val_path, stderr.read_text(errors="replace"))
    if "error" in result:
        ahead.cancel()
        return result, None
    return result, ahead


def run_evaluator(program: Path, workspace: Path, out: Path, split: str = "val", timeout: float | None = None,
                  env: dict | None = None, wrap=None) -> dict:
    """Score `program` in a fresh, isolated interpreter; return the evaluator's JSON (an `error` key on
    failure). The result is written to `out/eval-<split>.json`.

    `wrap(cmd, env) -> cmd` may put the evaluator in a sandbox (it may also add to `env`).
    """
    result_path = out / f"eval-{split}.json"
    _clear(result_path)
    with tempfile.TemporaryDirectory(prefix="autoresearch-eval-", ignore_cleanup_errors=True) as home:
        clean = evaluator_env(Path(home), env) | EVAL_ENV_SET
        cmd = evaluator_command(program, workspace, result_path, split)
        if wrap is not None:
            cmd = wrap(cmd, clean)
        try:
            proc = subprocess.run(cmd, env=clean, capture_output=True, text=True, timeout=timeout, cwd=home,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
        except subprocess.TimeoutExpired:
            return _timed_out(timeout)
    return _result(result_path, proc.stderr or proc.stdout)
