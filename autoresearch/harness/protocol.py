"""What train.py's process, the parent harness and the evaluator agree on: environment, files, the call.

Kept free of torch so the parent (`autoresearch run`) starts fast and never loads model code itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

RUN_DIR_ENV = "AUTORESEARCH_RUN_DIR"          # where submit() writes the exported model
EXPORT_ONLY_ENV = "AUTORESEARCH_EXPORT_ONLY"  # set by the parent: it scores the model itself
PROGRAM_FILE = "model.pt2"
SUBMIT_MARKER = "submitted"                   # written when submit() is called: the clock stops
SEED_ENV = "AUTORESEARCH_SEED"                # set by the harness when it repeats a run with another seed
DEFAULT_SEED = 42


def run_evaluator(program: Path, workspace: Path, out: Path, split: str = "val", timeout: float | None = None,
                  env: dict | None = None, wrap=None) -> dict:
    """Score `program` in a fresh interpreter; return the evaluator's JSON (an `error` key on failure).

    `wrap(cmd, env) -> cmd` may put the evaluator in a sandbox (it may also add to `env`).
    """
    result_path = out / f"eval-{split}.json"
    result_path.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "autoresearch.harness.evaluate", "--program", str(program),
           "--workspace", str(workspace), "--split", split, "--out", str(result_path)]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_") or k == "AUTORESEARCH_CACHE"}
    clean |= env or {}
    if wrap is not None:
        cmd = wrap(cmd, clean)
    try:
        proc = subprocess.run(cmd, env=clean, capture_output=True, text=True, timeout=timeout,
                              cwd=str(out), start_new_session=True)
    except subprocess.TimeoutExpired:
        return {"error_class": "eval-timeout", "error": f"the evaluator did not finish within {timeout:g}s"}
    if not result_path.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"error_class": "eval", "error": "the evaluator died: " + " | ".join(tail)}
    return json.loads(result_path.read_text())
