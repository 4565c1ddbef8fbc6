"""Shared helpers for the benchmark scripts in bench/ (not a benchmark itself).

    machine_info()            one-line description of the machine: CPU model, cores, torch, threads
    measure_matmul_peak()     best fp32 matmul FLOP/s seen on this machine: the CPU "peak" used for MFU
    prepared_cpu_data()       (data_dir, bos_id, vocab_size, seq_len) of the cpu profile, preparing it if needed
    temp_workspace(budget)    context manager: a throw-away cpu workspace (prepared and pinned), removed on exit
    run_train_py(ws, ...)     run a workspace's train.py in a subprocess; returns a TrainRun
    parse_summary(text)       the `key: value` lines of the last `---` block of a train.py run

Prepared data goes where the harness always puts it: $AUTORESEARCH_CACHE (default ~/.cache/autoresearch).
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

PROFILE = "cpu"


# -- machine ----------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_info() -> str:
    return (f"machine: {cpu_model()} | {usable_cores()} usable cores | python {platform.python_version()} | "
            f"torch {torch.__version__} | intra-op threads {torch.get_num_threads()} | "
            f"inter-op threads {torch.get_num_interop_threads()}")


def measure_matmul_peak(sizes=(1024, 1536, 2048), repeats: int = 5) -> float:
    """Best fp32 FLOP/s (2*n^3 per n x n matmul) over a few square sizes, each timed `repeats` times
    after one untimed call. Best-of, because the question is what the machine can reach."""
    best = 0.0
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n in sizes:
            a = torch.randn(n, n, generator=gen, dtype=torch.float32)
            b = torch.randn(n, n, generator=gen, dtype=torch.float32)
            out = torch.empty(n, n, dtype=torch.float32)
            torch.mm(a, b, out=out)
            for _ in range(repeats):
                t0 = time.perf_counter()
                torch.mm(a, b, out=out)
                dt = time.perf_counter() - t0
                best = max(best, 2.0 * n ** 3 / dt)
    return best


def fmt_flops(x: float) -> str:
    return f"{x / 1e9:.1f} GFLOP/s"


# -- data and workspaces ----------------------------------------------------------------------------
def prepared_cpu_data() -> tuple[Path, int, int, int]:
    """(data_dir, bos_id, vocab_size, seq_len) of the cpu profile; prepares it (once, ~3 s) if missing."""
    from autoresearch.harness.prepare import prepare
    from autoresearch.harness.profiles import get_profile
    from autoresearch.harness.tokenizer import Tokenizer
    from autoresearch.harness.paths import prepared_dir

    profile = get_profile(PROFILE)
    with contextlib.redirect_stdout(sys.stderr):
        prepare(profile, progress=False)
    data_dir = prepared_dir(profile.name)
    tok = Tokenizer.from_directory(data_dir)
    return data_dir, tok.get_bos_token_id(), tok.get_vocab_size(), profile.max_seq_len


@contextlib.contextmanager
def temp_workspace(budget: float, tag: str = "bench") -> Iterator[Path]:
    """A fresh cpu workspace with `budget` seconds of training, data prepared and pinned; deleted on exit."""
    from autoresearch.harness.prepare import prepare
    from autoresearch.harness.profiles import get_profile
    from autoresearch.workspace import init_workspace, pin_data

    tmp = Path(tempfile.mkdtemp(prefix="autoresearch-bench-"))
    try:
        settings = init_workspace(tmp / "ws", PROFILE, budget=budget, tag=tag)
        with contextlib.redirect_stdout(sys.stderr):
            manifest = prepare(get_profile(PROFILE), progress=False)
        pin_data(settings, manifest)
        yield settings.root
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- train.py runs ----------------------------------------------------------------------------------
def parse_summary(text: str) -> dict[str, str]:
    """`key: value` pairs after the last line that is exactly `---` (values as strings, stripped)."""
    lines = text.replace("\r", "\n").splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == "---"]
    if not starts:
        return {}
    summary = {}
    for line in lines[starts[-1] + 1:]:
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*):\s*(.*?)\s*$", line)
        if m:
            summary[m.group(1)] = m.group(2)
    return summary


def as_float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


_STEP_TOKS = re.compile(r"step (\d+) .*?\| tok/sec: ([\d,]+)")


def steady_tokens_per_sec(per_step: list[float], skip_frac: float = 0.1, min_skip: int = 2) -> float | None:
    """Median tokens/s of the steps after the first `skip_frac` of them (at least `min_skip` dropped)."""
    if not per_step:
        return None
    skip = min(max(min_skip, int(len(per_step) * skip_frac)), len(per_step) - 1)
    return statistics.median(per_step[skip:])


@dataclass
class TrainRun:
    returncode: int
    output: str                       # stdout + stderr, as printed
    wall_seconds: float               # the whole process, start-up and evaluation included
    summary: dict[str, str] = field(default_factory=dict)
    flops_per_token: float | None = None
    step_tokens_per_sec: list[float] = field(default_factory=list)

    def value(self, key: str) -> float | None:
        return as_float(self.summary.get(key))

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.output.replace("\r", "\n").splitlines()[-n:])


def run_train_py(workspace: Path, *, extra_env: dict[str, str] | None = None, timeout: float | None = None) -> TrainRun:
    """Run `python train.py` in `workspace` and parse what it printed."""
    env = dict(os.environ)
    env.update(extra_env or {})
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "train.py"], cwd=workspace, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)
    run = TrainRun(proc.returncode, proc.stdout, time.perf_counter() - t0, parse_summary(proc.stdout))
    if m := re.search(r"Estimated FLOPs per token:\s*([0-9.eE+-]+)", proc.stdout):
        run.flops_per_token = float(m.group(1))
    run.step_tokens_per_sec = [float(t.replace(",", "")) for _, t in _STEP_TOKS.findall(proc.stdout.replace("\r", "\n"))]
    return run
