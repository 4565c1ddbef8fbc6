"""The frozen harness: the only API train.py may import (`from autoresearch.harness import ...`).

    MAX_SEQ_LEN, TIME_BUDGET, EVAL_TOKENS, VOCAB_SIZE   the workspace profile's constants
    SEED                                                42, or the seed of a repeat run (noise, confirmation)
    Tokenizer.from_directory()                          the workspace's BPE tokenizer
    make_dataloader(tokenizer, B, T, split="train")     BOS-aligned best-fit packing, train split only
    start_clock()                                       the training clock (budget = TIME_BUDGET)
    submit(model)                                       export + out-of-process val_bpb
    peak_flops(device), peak_memory_mb(device)          for the summary (MFU, memory)

Constants are read lazily from the workspace's frozen `autoresearch.toml`, so importing this package
outside a workspace (the CLI does) costs nothing.
"""

from __future__ import annotations

from pathlib import Path

from .clock import TrainingClock
from .tokenizer import Tokenizer as _Tokenizer

_CONSTANTS = {
    "MAX_SEQ_LEN": "max_seq_len",
    "TIME_BUDGET": "time_budget",
    "EVAL_TOKENS": "eval_tokens",
    "VOCAB_SIZE": "vocab_size",
}


_LAZY = {"submit": "submission", "SubmissionError": "submission", "peak_flops": "device", "peak_memory_mb": "device"}


def __getattr__(name: str):
    """Profile constants come from the workspace; torch-heavy names load on first use."""
    import importlib

    if name == "SEED":
        import os

        from .protocol import DEFAULT_SEED, SEED_ENV

        return int(os.environ.get(SEED_ENV) or DEFAULT_SEED)
    if name in _CONSTANTS:
        from . import context

        return getattr(context.settings().profile, _CONSTANTS[name])
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'autoresearch.harness' has no attribute {name!r}")


class Tokenizer(_Tokenizer):
    @classmethod
    def from_directory(cls, directory: Path | None = None) -> "Tokenizer":
        """The workspace's tokenizer (or the one in `directory`)."""
        from . import context

        return super().from_directory(directory or context.data_dir())


def make_dataloader(tokenizer, B: int, T: int, split: str = "train", device="cpu", seed: int = 0):
    """Yields (inputs, targets, epoch): (B, T) int64 tensors, every row starting with BOS, no padding."""
    from . import context
    from .loader import make_dataloader as _make

    return _make(context.data_dir(), tokenizer.get_bos_token_id(), B, T, split=split, device=device, seed=seed)


def start_clock() -> TrainingClock:
    """Start the training clock now; its budget is the workspace's TIME_BUDGET."""
    from . import context

    return TrainingClock(context.settings().profile.time_budget).start()


__all__ = [*_CONSTANTS, "Tokenizer", "make_dataloader", "start_clock", "submit", "SubmissionError",
           "TrainingClock", "peak_flops", "peak_memory_mb"]
