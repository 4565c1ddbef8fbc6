"""Data loader throughput against what training consumes (cpu profile).

Run (from the repository root):

    python bench/bench_loader.py
    python bench/bench_loader.py --train-tokens-per-sec 27000     # skip the short train.py run
    python bench/bench_loader.py --seconds 5 --train-budget 15

Measures the harness loader (`autoresearch.harness.loader.make_dataloader`, train split of the prepared
cpu profile, seed 42 like train.py) in this process, for B=16,T=256 and B=32,T=256: a few untimed batches,
then as many batches as fit in --seconds (default 3), reported as tokens/s.

Training's consumption is train.py's `tokens_per_sec`: --train-tokens-per-sec if given, otherwise a real
`python train.py` in a temporary cpu workspace with a --train-budget (default 15) second budget, run
before the loader is timed (never at the same time). The temporary workspace is removed afterwards;
prepared data lives in $AUTORESEARCH_CACHE (default ~/.cache/autoresearch). No network is needed.

Prints loader tokens/s / training tokens/s for each shape. The goal is >= 20x for every shape; the exit
status is 1 if the lowest ratio is below it (2 if train.py could not be run).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

GOAL = 20.0
SHAPES = [(16, 256), (32, 256)]
SEED = 42


def time_loader(data_dir: Path, bos_id: int, B: int, T: int, seconds: float, warmup_batches: int = 5) -> dict:
    from autoresearch.harness.loader import make_dataloader

    t_open = time.perf_counter()
    loader = make_dataloader(data_dir, bos_id, B, T, split="train", seed=SEED)
    for _ in range(warmup_batches):
        next(loader)
    t_first = time.perf_counter() - t_open
    batches = 0
    t0 = time.perf_counter()
    while True:
        x, y, epoch = next(loader)
        batches += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            break
    assert x.shape == (B, T) and y.shape == (B, T)
    return dict(B=B, T=T, batches=batches, seconds=elapsed, tokens_per_sec=batches * B * T / elapsed,
                ms_per_batch=1000 * elapsed / batches, epoch=epoch, open_seconds=t_first)


def train_tokens_per_sec(budget: float) -> float | None:
    peak = common.measure_matmul_peak()
    print(f"running train.py for a {budget:g} s budget in a temporary workspace "
          f"(AUTORESEARCH_PEAK_FLOPS = measured {common.fmt_flops(peak)}) ...", flush=True)
    with common.temp_workspace(budget) as ws:
        run = common.run_train_py(ws, extra_env={"AUTORESEARCH_PEAK_FLOPS": repr(peak)}, timeout=budget + 900)
    tps = run.value("tokens_per_sec")
    if run.returncode != 0 or tps is None:
        print(f"ERROR: train.py failed (exit code {run.returncode}); last lines:\n{run.tail()}")
        return None
    print(f"train.py: tokens_per_sec {tps:,.0f} over {run.summary.get('num_steps')} steps, "
          f"{run.summary.get('training_seconds')} s (mfu_percent {run.summary.get('mfu_percent')})")
    return tps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per loader shape (default 3)")
    parser.add_argument("--train-tokens-per-sec", type=float, default=None,
                        help="training throughput to compare against (default: measure with a short train.py run)")
    parser.add_argument("--train-budget", type=float, default=15.0, help="budget of that train.py run (default 15)")
    args = parser.parse_args()

    print(common.machine_info())
    if args.train_tokens_per_sec is not None:
        train_tps = args.train_tokens_per_sec
        print(f"training tokens/s: {train_tps:,.0f} (from --train-tokens-per-sec)")
    else:
        train_tps = train_tokens_per_sec(args.train_budget)
        if train_tps is None:
            return 2
    if train_tps <= 0:
        print("ERROR: training tokens/s must be positive")
        return 2

    data_dir, bos_id, _, _ = common.prepared_cpu_data()
    print(f"data: {data_dir} (train split)")
    results = [time_loader(data_dir, bos_id, B, T, args.seconds) for B, T in SHAPES]

    print()
    header = f"{'B x T':<10} {'batches':>8} {'ms/batch':>9} {'loader tok/s':>14} {'train tok/s':>12} {'ratio':>8}"
    print(header)
    print("-" * len(header))
    for r in results:
        r["ratio"] = r["tokens_per_sec"] / train_tps
        print(f"{r['B']:>3} x {r['T']:<4} {r['batches']:>8} {r['ms_per_batch']:>9.3f} {r['tokens_per_sec']:>14,.0f} "
              f"{train_tps:>12,.0f} {r['ratio']:>7.1f}x")
    worst = min(r["ratio"] for r in results)
    print()
    print(f"ratio loader/training tokens/s: {worst:.1f}x (lowest over shapes; goal >= {GOAL:g}x): "
          f"{'OK' if worst >= GOAL else 'BELOW GOAL'}")
    return 0 if worst >= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
