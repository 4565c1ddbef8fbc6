"""`submit(model)`: how train.py hands its trained model to the harness.

The model is exported with `torch.export` (a graph of ATen ops plus its weights; no Python from
train.py survives) into the run folder. Then, unless the parent `autoresearch run` scores it itself, a
fresh Python process runs the frozen evaluator on that file and its number is returned.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from .protocol import EXPORT_ONLY_ENV, PROGRAM_FILE, RUN_DIR_ENV, SUBMIT_MARKER, run_evaluator
from .settings import Settings

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
