"""`submit(model)`: how train.py hands its trained model to the harness.

The model is exported with `torch.export` (a graph of ATen ops plus its weights; no Python from
train.py survives) into the run folder. Then, unless the parent `autoresearch run` scores it itself, a
fresh Python process runs the frozen evaluator on that file and its number is returned.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from .settings import Settings

RUN_DIR_ENV = "AUTORESEARCH_RUN_DIR"
EXPORT_ONLY_ENV = "AUTORESEARCH_EXPORT_ONLY"
PROGRAM_FILE = "model.pt2"
SUBMIT_MARKER = "submitted"


class SubmissionError(RuntimeError):
    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind = kind


def run_dir(settings: Settings) -> Path:
    if env := os.environ.get(RUN_DIR_ENV):
        path = Path(env)
    else:
        path = settings.root / "runs" / time.strftime("manual-%Y%m%d-%H%M%S")
    path.mkdir(parents=True, exist_ok=True)
    return path


def export_model(model: torch.nn.Module, settings: Settings, out: Path) -> Path:
    model = getattr(model, "_orig_mod", model)  # a torch.compile wrapper exports as its module
    model.eval()
    device = next(model.parameters()).device
    example = torch.zeros(settings.profile.eval_batch_size, settings.profile.max_seq_len, dtype=torch.long, device=device)
    try:
        with torch.no_grad():
            program = torch.export.export(model, (example,), strict=False)
    except Exception as e:  # noqa: BLE001 - any export failure is reported with its cause
        raise SubmissionError("export", f"torch.export failed: {type(e).__name__}: {e}") from e
    path = out / PROGRAM_FILE
    tmp = out / "model.tmp.pt2"
    torch.export.save(program, str(tmp))
    tmp.replace(path)
    return path


def run_evaluator(program: Path, workspace: Path, out: Path, split: str = "val", timeout: float | None = None,
                  env: dict | None = None) -> dict:
    """Score `program` in a fresh interpreter; return the evaluator's JSON (an `error` key on failure)."""
    result_path = out / f"eval-{split}.json"
    result_path.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "autoresearch.harness.evaluate", "--program", str(program),
           "--workspace", str(workspace), "--split", split, "--out", str(result_path)]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_") or k == "AUTORESEARCH_CACHE"}
    try:
        proc = subprocess.run(cmd, env=clean | (env or {}), capture_output=True, text=True, timeout=timeout,
                              cwd=str(out), start_new_session=True)
    except subprocess.TimeoutExpired:
        return {"error_class": "eval-timeout", "error": f"the evaluator did not finish within {timeout:g}s"}
    if not result_path.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"error_class": "eval", "error": "the evaluator died: " + " | ".join(tail)}
    return json.loads(result_path.read_text())


def submit(model: torch.nn.Module) -> dict:
    """Export `model` and have the harness score it; returns {"val_bpb": ..., ...}."""
    from . import context

    settings = context.settings()
    t0 = time.time()
    out = run_dir(settings)
    (out / SUBMIT_MARKER).write_text(str(t0))  # the parent stops its training clock when this appears
    program = export_model(model, settings, out)
    export_seconds = time.time() - t0
    if os.environ.get(EXPORT_ONLY_ENV):
        return {"val_bpb": None, "program": str(program), "export_seconds": export_seconds}
    result = run_evaluator(program, settings.root, out)
    if "error" in result:
        raise SubmissionError(result["error_class"], result["error"])
    result.update(program=str(program), export_seconds=round(export_seconds, 3),
                  submit_seconds=round(time.time() - t0, 3))
    return result
