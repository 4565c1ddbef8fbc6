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
import site
import subprocess
import sys
import tempfile
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


def evaluator_command(program: Path, workspace: Path, result: Path, split: str) -> list[str]:
    return [sys.executable, "-I", "-c", BOOT, os.pathsep.join(import_roots()), "--program", str(program),
            "--workspace", str(workspace), "--split", split, "--out", str(result),
            "--expect-fingerprint", harness_fingerprint()]


def _remove(path: Path) -> None:
    """Whatever the candidate left at `path` (a file, a link, a folder) is removed, never followed."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def run_evaluator(program: Path, workspace: Path, out: Path, split: str = "val", timeout: float | None = None,
                  env: dict | None = None, wrap=None) -> dict:
    """Score `program` in a fresh, isolated interpreter; return the evaluator's JSON (an `error` key on
    failure). The result is written to `out/eval-<split>.json`.

    `wrap(cmd, env) -> cmd` may put the evaluator in a sandbox (it may also add to `env`).
    """
    result_path = out / f"eval-{split}.json"
    for stale in (result_path, result_path.with_name(result_path.name + ".tmp")):
        _remove(stale)
    with tempfile.TemporaryDirectory(prefix="autoresearch-eval-", ignore_cleanup_errors=True) as home:
        clean = evaluator_env(Path(home), env) | EVAL_ENV_SET
        cmd = evaluator_command(program, workspace, result_path, split)
        if wrap is not None:
            cmd = wrap(cmd, clean)
        try:
            proc = subprocess.run(cmd, env=clean, capture_output=True, text=True, timeout=timeout, cwd=home,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
        except subprocess.TimeoutExpired:
            return {"error_class": "eval-timeout", "error": f"the evaluator did not finish within {timeout:g}s"}
    if not result_path.is_file() or result_path.is_symlink():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"error_class": "eval", "error": "the evaluator died: " + " | ".join(tail)}
    return json.loads(result_path.read_text())
