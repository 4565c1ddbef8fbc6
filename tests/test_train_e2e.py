"""End to end on CPU: init -> prepare -> python train.py, scored by the harness out of process."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli

pytestmark = pytest.mark.slow


def summary(stdout: str) -> dict[str, str]:
    """The `key: value` lines after the last `---`."""
    block = stdout.rsplit("\n---\n", 1)[1]
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in block.splitlines() if ":" in line)}


def run_train(root: Path, timeout: float = 300, compiled: bool = False, env: dict | None = None) -> subprocess.CompletedProcess:
    drop = {"AUTORESEARCH_WORKSPACE"} | ({"TORCHDYNAMO_DISABLE"} if compiled else set())
    env = {k: v for k, v in os.environ.items() if k not in drop} | (env or {})
    return subprocess.run([sys.executable, "train.py"], cwd=root, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def lab(cache_dir, tmp_path):
    root = tmp_path / "lab"
    assert run_cli("init", str(root), "--profile", "cpu", "--budget", "4", "--tag", "e2e", cwd=tmp_path).returncode == 0
    proc = run_cli("prepare", cwd=root)
    assert proc.returncode == 0, proc.stderr
    return root


def test_train_py_trains_and_the_harness_scores_it(lab):
    # the real path: torch.compile'd model on CPU (by hand, the clock starts after compilation), and a peak
    # FLOPs given, so MFU is reported (without one it is "unknown": tests/test_quickstart.py)
    proc = run_train(lab, compiled=True, env={"AUTORESEARCH_PEAK_FLOPS": "1e11"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    s = summary(proc.stdout)
    val_bpb = float(s["val_bpb"])
    uniform = math.log2(2048) / 3.08  # bits per token of a uniform model over ~3.08 bytes per token
    # an untrained model scores about the uniform value; the few steps of a busy 2-core machine (the compiled
    # start-up eats into the window) already take it clearly below
    assert val_bpb < 0.98 * uniform, s
    assert 4.0 <= float(s["training_seconds"]) < 8.0
    assert int(s["num_steps"]) > 3 and float(s["peak_rss_mb"]) > 100
    assert s["device"] == "cpu" and "compile model: True" in proc.stdout
    flops = float(proc.stdout.split("Estimated FLOPs per token: ")[1].split()[0])
    assert float(s["mfu_percent"]) == pytest.approx(100 * flops * float(s["tokens_per_sec"]) / 1e11, rel=0.02)
    # the printed number is the one the evaluator process wrote, not one train.py computed
    (run,) = (lab / "runs").iterdir()
    result = json.loads((run / "eval-val.json").read_text())
    assert f"{result['val_bpb']:.6f}" == s["val_bpb"]
    assert result["eval_tokens"] == 65536 and result["causality_leak"] < 1e-5
    assert (run / "model.pt2").stat().st_size > 1_000_000


def test_nan_loss_fails_fast_and_loudly(lab):
    path = lab / "train.py"
    path.write_text(path.read_text().replace("EMBEDDING_LR = 0.6 ", "EMBEDDING_LR = float('nan') ", 1))
    proc = run_train(lab)
    assert proc.returncode == 1
    assert "FAIL: training loss is nan" in proc.stdout
    assert "\n---\n" not in proc.stdout  # no summary, no score


def test_on_cpu_the_model_is_compiled_only_when_the_window_earns_it_back(lab):
    """Under the harness the window closes at a time fixed from launch, so a cold compile (45 s on 2 cores)
    comes out of training: at the cpu profile's default (60 s budget + 30 s start-up) train.py runs eager."""
    import time

    from autoresearch.harness.clock import TRAINING_ENDS_ENV

    for window, compiled in ((90.0, False), (600.0, True)):
        env = {k: v for k, v in os.environ.items() if k not in ("AUTORESEARCH_WORKSPACE", "TORCHDYNAMO_DISABLE")}
        env[TRAINING_ENDS_ENV] = repr(time.monotonic() + window)
        proc = subprocess.Popen([sys.executable, "train.py"], cwd=lab, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            first = proc.stdout.readline()  # the device line, printed before any compilation or training
        finally:
            proc.kill()
            proc.communicate()
        assert first.startswith("Device: cpu"), first
        assert f"compile model: {compiled}" in first, (window, first)
