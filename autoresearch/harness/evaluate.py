"""The frozen metric: score an exported model in a fresh process that holds no code from train.py.

    python -m autoresearch.harness.evaluate --program model.pt2 --workspace DIR --out result.json

The program is a `torch.export` graph of ATen ops. This module loads it, checks every op against an
allowlist, runs it on the pinned validation rows (the same rows for every experiment: documents in file
order, packed best-fit, a fixed token count), computes cross-entropy itself from the logits and turns it
into bits per byte with the token-bytes table. Special tokens (0 bytes) count in neither sum. A causality
probe then checks that the logits at position t do not move when tokens after t change.
"""

from __future__ import annotations

import argparse
import json
import math
import operator
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .loader import eval_batches
from .settings import Settings
from .prepare import require_prepared
from .tokenizer import Tokenizer, load_token_bytes

ALLOWED_NAMESPACES = {"aten"}
ALLOWED_HIGHER_ORDER = {"wrap_with_set_grad_enabled", "wrap_with_autocast"}
PROBE_CUTS = (0.25, 0.5, 0.75)


class EvalError(Exception):
    """An integrity or shape failure, with a class for the ledger (export, graph, shape, causality...)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def check_graph(program) -> list[str]:
    """Names of the ops in the program, after refusing any op outside the allowlist."""
    seen = set()
    modules = [program.graph_module]
    while modules:
        gm = modules.pop()
        for node in gm.graph.nodes:
            if node.op == "get_attr":
                attr = getattr(gm, node.target, None)
                if isinstance(attr, torch.fx.GraphModule):
                    modules.append(attr)
            if node.op != "call_function":
                continue
            target = node.target
            if target is operator.getitem:
                continue
            if isinstance(target, torch._ops.HigherOrderOperator) and target.name() in ALLOWED_HIGHER_ORDER:
                seen.add(target.name())
                continue
            namespace = getattr(target, "namespace", None)
            if not isinstance(target, torch._ops.OpOverload) or namespace not in ALLOWED_NAMESPACES:
                raise EvalError("graph", f"op {target} is not allowed in a submitted model (only ATen ops are)")
            seen.add(str(target))
    return sorted(seen)


def nats_and_bytes(logits: torch.Tensor, targets: torch.Tensor, token_bytes: torch.Tensor) -> tuple[float, int]:
    """Sum of cross-entropy (nats) over targets that are text, and the UTF-8 bytes of those targets."""
    vocab = token_bytes.numel()
    logits = logits.float()[..., :vocab] if logits.size(-1) > vocab else logits.float()
    nats = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
    nbytes = token_bytes[targets.reshape(-1)]
    mask = nbytes > 0
    return float((nats * mask).sum()), int(nbytes.sum())


def bits_per_byte(total_nats: float, total_bytes: int) -> float:
    return total_nats / (math.log(2) * total_bytes)


def _forward(module, x: torch.Tensor, autocast: bool) -> torch.Tensor:
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        out = module(x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise EvalError("shape", f"the model returned {type(out).__name__}, not a tensor of logits")
    return out


def causality_probe(module, x: torch.Tensor, vocab: int, autocast: bool, seed: int = 0) -> float:
    """Largest change of logits at positions <= t when every token after t is replaced; must be ~0."""
    gen = torch.Generator().manual_seed(seed)
    base = _forward(module, x, autocast).float()
    scale = base.abs().max().item() + 1e-6
    worst = 0.0
    T = x.size(1)
    for frac in PROBE_CUTS:
        t = max(0, min(T - 2, int(T * frac)))
        changed = x.clone()
        noise = torch.randint(0, vocab, (x.size(0), T - t - 1), generator=gen).to(x.device)
        changed[:, t + 1:] = noise
        out = _forward(module, changed, autocast).float()
        diff = (out[:, : t + 1] - base[:, : t + 1]).abs().max().item()
        worst = max(worst, diff / scale)
    return worst


def evaluate_program(program_path: Path, settings: Settings, split: str = "val", device: str | None = None) -> dict:
    t0 = time.time()
    profile = settings.profile
    data_dir, manifest = require_prepared(profile)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    autocast = device == "cuda"
    try:
        program = torch.export.load(str(program_path))
    except Exception as e:  # noqa: BLE001 - any failure to load is the candidate's
        raise EvalError("export", f"could not load the exported model: {type(e).__name__}: {e}") from None
    ops = check_graph(program)
    module = program.module().to(device)
    tok = Tokenizer.from_directory(data_dir)
    token_bytes = torch.from_numpy(load_token_bytes(data_dir).astype(np.int64)).to(device)
    B, T = profile.eval_batch_size, profile.max_seq_len
    steps = max(1, profile.eval_tokens // (B * T))
    total_nats, total_bytes, done = 0.0, 0, 0
    first = None
    for rows in eval_batches(data_dir, tok.bos_token_id, B, T + 1, split, settings.metric_version):
        rows = torch.from_numpy(rows).to(device)
        x, y = rows[:, :-1], rows[:, 1:]
        logits = _forward(module, x, autocast)
        if logits.dim() != 3 or tuple(logits.shape[:2]) != (B, T) or logits.size(-1) < tok.get_vocab_size():
            raise EvalError("shape", f"logits of shape {tuple(logits.shape)}; expected ({B}, {T}, >= vocab)")
        nats, nbytes = nats_and_bytes(logits, y, token_bytes)
        if not math.isfinite(nats):
            raise EvalError("nonfinite", "the model produced non-finite logits on validation data")
        total_nats += nats
        total_bytes += nbytes
        done += 1
        if first is None:
            first = x
        if done == steps:
            break
    if done < steps:
        raise EvalError("data", f"the {split} split holds {done} batches; the profile needs {steps}")
    t_eval = time.time() - t0
    leak = causality_probe(module, first, tok.get_vocab_size(), autocast)
    tolerance = 2e-2 if autocast else 1e-4
    if leak > tolerance:
        raise EvalError("causality", f"logits at position t changed by {leak:.3g} (relative) when later tokens "
                        "changed: the model looks at the future")
    return {
        "val_bpb" if split == "val" else f"{split}_bpb": bits_per_byte(total_nats, total_bytes),
        "split": split,
        "eval_tokens": done * B * T,
        "eval_bytes": total_bytes,
        "eval_seconds": round(t_eval, 3),
        "probe_seconds": round(time.time() - t0 - t_eval, 3),
        "causality_leak": leak,
        "ops": len(ops),
        "device": device,
        "data_fingerprint": manifest["data_fingerprint"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--program", required=True, type=Path)
    parser.add_argument("--workspace", required=True, type=Path)
    parser.add_argument("--split", default="val")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        result = evaluate_program(args.program, Settings.load(args.workspace), args.split, args.device)
        code = 0
    except EvalError as e:
        result, code = {"error_class": e.kind, "error": str(e)}, 1
    except Exception as e:  # noqa: BLE001 - reported, never a silent pass
        result, code = {"error_class": "eval", "error": f"{type(e).__name__}: {e}"}, 1
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(args.out)
    if code:
        print(f"evaluation failed ({result['error_class']}): {result['error']}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
