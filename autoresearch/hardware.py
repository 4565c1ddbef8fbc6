"""What a result was measured on: the platform key that keeps comparisons within one kind of hardware.

    cpu: AMD EPYC 7B13 x2 threads | torch 2.13.0 | budget 60s
    cuda: NVIDIA H100 80GB HBM3 x1 | torch 2.13.0+cu128 | budget 300s

Two results are compared only when their keys are equal: the same device model and count, the same torch
and the same training budget. A change kept on one GPU model may be a loss on another, so a swarm measures
the frontier on each platform it runs on before deciding anything there.
"""

from __future__ import annotations

import os
from pathlib import Path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "cpu"


def threads() -> int:
    """The torch threads a training process gets here (OMP_NUM_THREADS, else every core it may use)."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def platform_key(budget: float) -> str:
    """This process's platform: its accelerator (or CPU model and thread count), torch, the budget."""
    import torch

    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        device = f"cuda: {torch.cuda.get_device_name(0)} x{count}"
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        device = "mps: Apple GPU x1"
    else:
        device = f"cpu: {cpu_name()} x{threads()} threads"
    return f"{device} | torch {torch.__version__} | budget {budget:g}s"
