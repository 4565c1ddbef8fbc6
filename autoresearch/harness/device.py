"""Measurement helpers for train.py's summary: peak FLOPs per device and peak memory.

These only report; they decide nothing about training. A device whose peak is not in the table gets
`None`, and train.py prints MFU as unknown instead of a wrong number.
"""

from __future__ import annotations

import os
import resource
import sys

import torch

PEAK_FLOPS_ENV = "AUTORESEARCH_PEAK_FLOPS"

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, matched on the device name.
GPU_PEAK_BF16 = [
    ("H200", 989.5e12),
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989.5e12),
    ("H800", 989.5e12),
    ("GH200", 989.5e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("RTX 4090", 165.2e12),
    ("RTX 3090", 71e12),
]


def peak_flops(device: torch.device | str) -> float | None:
    """Peak FLOP/s of `device` for the precision train.py uses there, or None if unknown."""
    if env := os.environ.get(PEAK_FLOPS_ENV):
        return float(env)
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(device)
        for key, flops in GPU_PEAK_BF16:
            if key in name:
                return flops
    return None


def peak_memory_mb(device: torch.device | str) -> float:
    """Peak memory of this process: allocated VRAM on CUDA, resident set size elsewhere."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10
