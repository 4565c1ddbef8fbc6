"""Training throughput of our train.py against a plain nanoGPT-style reference of the same shape (CPU).

Run (from the repository root):

    python bench/bench_train.py --seconds 30
    python bench/bench_train.py --seconds 30 --repeats 3

What it does, in one run:
  1. prints the machine and measures its fp32 matmul peak (best of 1024..2048 square matmuls); that number
     is the "peak" for every MFU below, and train.py gets it through AUTORESEARCH_PEAK_FLOPS;
  2. makes a temporary cpu workspace with a budget of --seconds (data prepared into $AUTORESEARCH_CACHE,
     default ~/.cache/autoresearch; no network needed) and runs its real `python train.py` in a subprocess;
  3. runs the reference in a subprocess too (this same file with a hidden worker flag): GPT with the shape
     train.py printed (depth, width, heads, vocab, sequence length) and train.py's DEVICE_BATCH_SIZE:
     token + learned position embeddings, pre-LayerNorm blocks, causal SDPA attention, GELU MLP 4x,
     untied head, torch.optim.AdamW, fp32, `torch.compile(model, dynamic=False)` like train.py, fed by the
     same harness loader (same seed). Its loop mirrors train.py's: one untimed warm-up step (compilation),
     then forward, backward, next batch, optimizer step, zero_grad, loss.item() per step until --seconds
     of training have passed, with Python's GC frozen after the first step;
  4. prints a table and `ratio tokens/s ours/reference: X.XX`.

tokens/s "steady" is the median per-step rate after dropping the first 10% of steps (at least 2); "avg" is
all training tokens / training seconds (train.py's own tokens_per_sec). The ratio line uses steady.
FLOPs per token: ours is the value train.py prints (6 x matmul weights + attention); the reference uses
the same convention: 6 x (block matmul weights + lm_head) + 12 * n_layer * n_embd * T.
With --repeats N the two runs alternate in order and the table shows medians over the N repeats.
The temporary workspace is removed at the end (also on failure or Ctrl-C).
"""

from __future__ import annotations

import argparse
import ast
import gc
import math
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

DEFAULT_SHAPE = dict(n_layer=2, n_embd=128, n_head=2, vocab_size=2048, sequence_len=256)
DEFAULT_BATCH = 16
SEED = 42  # train.py's SEED: same weights seed and same data order for both


# ---------------------------------------------------------------------------------------------------
# The reference model (nanoGPT style)
# ---------------------------------------------------------------------------------------------------
class RefAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=False)
        self.out = nn.Linear(n_embd, n_embd, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(B, T, C))


class RefBlock(nn.Module):
    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.ln_attn = nn.LayerNorm(n_embd)
        self.attn = RefAttention(n_embd, n_head)
        self.ln_mlp = nn.LayerNorm(n_embd)
        self.up = nn.Linear(n_embd, 4 * n_embd, bias=False)
        self.down = nn.Linear(4 * n_embd, n_embd, bias=False)

    def forward(self, x):
        x = x + self.attn(self.ln_attn(x))
        return x + self.down(F.gelu(self.up(self.ln_mlp(x))))


class RefGPT(nn.Module):
    def __init__(self, n_layer: int, n_embd: int, n_head: int, vocab_size: int, sequence_len: int):
        super().__init__()
        self.n_layer, self.n_embd, self.seq_len = n_layer, n_embd, sequence_len
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Embedding(sequence_len, n_embd)
        self.blocks = nn.ModuleList(RefBlock(n_embd, n_head) for _ in range(n_layer))
        self.ln_out = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        self.register_buffer("positions", torch.arange(sequence_len), persistent=False)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                # GPT-2 init; residual output projections scaled down by depth
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(("out.weight", "down.weight")) else 0.02
                nn.init.normal_(p, mean=0.0, std=std)

    def forward(self, idx, targets):
        T = idx.size(1)
        x = self.tok_emb(idx) + self.pos_emb(self.positions[:T])
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_out(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    def matmul_params(self) -> int:
        return sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))

    def flops_per_token(self) -> float:
        return 6 * self.matmul_params() + 12 * self.n_layer * self.n_embd * self.seq_len


def reference_worker(args) -> int:
    """Train the reference for args.seconds (after one warm-up step) and print a `---` summary block."""
    from autoresearch.harness.loader import make_dataloader

    t_process = time.perf_counter()
    data_dir, bos_id, _, _ = common.prepared_cpu_data()
    torch.manual_seed(SEED)
    model = RefGPT(args.n_layer, args.n_embd, args.n_head, args.vocab_size, args.seq_len)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    train_model = torch.compile(model, dynamic=False)
    loader = make_dataloader(data_dir, bos_id, args.batch, args.seq_len, split="train", seed=SEED)
    x, y, _ = next(loader)

    t_warm = time.perf_counter()
    train_model(x, y).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    warmup_seconds = time.perf_counter() - t_warm
    print(f"Warm-up (compilation) took {warmup_seconds:.1f}s", flush=True)

    tokens_per_step = args.batch * args.seq_len
    per_step: list[float] = []
    t_start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        loss = train_model(x, y)
        loss.backward()
        x, y, _ = next(loader)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_f = loss.item()
        dt = time.perf_counter() - t0
        per_step.append(tokens_per_step / dt)
        if len(per_step) == 1:  # as train.py does
            gc.collect()
            gc.freeze()
            gc.disable()
        if time.perf_counter() - t_start >= args.seconds:
            break
    training_seconds = time.perf_counter() - t_start
    steps = len(per_step)
    if not math.isfinite(loss_f):
        print(f"FAIL: reference loss is {loss_f}")
        return 1

    import resource
    print("---")
    print(f"tokens_per_sec:        {steps * tokens_per_step / training_seconds:.0f}")
    print(f"steady_tokens_per_sec: {common.steady_tokens_per_sec(per_step):.0f}")
    print(f"num_steps:             {steps}")
    print(f"training_seconds:      {training_seconds:.1f}")
    print(f"warmup_seconds:        {warmup_seconds:.1f}")
    print(f"startup_seconds:       {t_start - t_process:.1f}")
    print(f"flops_per_token:       {model.flops_per_token():e}")
    print(f"num_params_M:          {sum(p.numel() for p in model.parameters()) / 1e6:.2f}")
    print(f"final_loss:            {loss_f:.4f}")
    print(f"peak_rss_mb:           {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}")
    return 0


# ---------------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------------
def our_shape(run: common.TrainRun, workspace: Path) -> tuple[dict, int]:
    """The model shape train.py printed (`Model config: {...}`) and its DEVICE_BATCH_SIZE."""
    shape = dict(DEFAULT_SHAPE)
    if m := re.search(r"^Model config: (\{.*\})\s*$", run.output, re.M):
        try:
            config = ast.literal_eval(m.group(1))
            shape.update({k: int(config[k]) for k in DEFAULT_SHAPE if k in config})
        except (ValueError, SyntaxError):
            print("warning: could not read train.py's model config; reference uses the cpu defaults")
    batch = DEFAULT_BATCH
    if m := re.search(r"^DEVICE_BATCH_SIZE\s*=\s*(\d+)", (workspace / "train.py").read_text(), re.M):
        batch = int(m.group(1))
    return shape, batch


def run_reference(shape: dict, batch: int, seconds: float) -> common.TrainRun:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker-reference", "--seconds", str(seconds),
           "--n-layer", str(shape["n_layer"]), "--n-embd", str(shape["n_embd"]), "--n-head", str(shape["n_head"]),
           "--vocab-size", str(shape["vocab_size"]), "--seq-len", str(shape["sequence_len"]), "--batch", str(batch)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=seconds + 600)
    run = common.TrainRun(proc.returncode, proc.stdout, time.perf_counter() - t0, common.parse_summary(proc.stdout))
    run.flops_per_token = run.value("flops_per_token")
    return run


def fail(what: str, run: common.TrainRun) -> int:
    print(f"\nERROR: {what} failed (exit code {run.returncode}); last lines of its output:")
    print(run.tail())
    return 1


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, spec: str, missing: str = "n/a") -> str:
    return format(value, spec) if value is not None else missing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="training seconds per run (default 30)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each side (default 1)")
    parser.add_argument("--worker-reference", action="store_true", help=argparse.SUPPRESS)
    for flag, default in [("--n-layer", 2), ("--n-embd", 128), ("--n-head", 2), ("--vocab-size", 2048),
                          ("--seq-len", 256), ("--batch", DEFAULT_BATCH)]:
        parser.add_argument(flag, type=int, default=default, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_reference:
        return reference_worker(args)
    if args.seconds <= 0 or args.repeats < 1:
        parser.error("--seconds must be > 0 and --repeats >= 1")

    print(common.machine_info())
    peak = common.measure_matmul_peak()
    print(f"measured fp32 matmul peak: {common.fmt_flops(peak)} (best of 1024/1536/2048 square matmuls; "
          f"the 100% of every MFU below)")
    print(f"budget: {args.seconds:g} s of training per run, {args.repeats} repeat(s); warm-up/compile excluded")
    sys.stdout.flush()

    ours_runs: list[common.TrainRun] = []
    ref_runs: list[common.TrainRun] = []
    shape, batch = None, None
    with common.temp_workspace(args.seconds) as ws:
        for r in range(args.repeats):
            order = ["ours", "reference"] if r % 2 == 0 else ["reference", "ours"]
            for side in order:
                print(f"[repeat {r + 1}/{args.repeats}] running {side} ...", flush=True)
                if side == "ours":
                    run = common.run_train_py(ws, extra_env={"AUTORESEARCH_PEAK_FLOPS": repr(peak)},
                                              timeout=args.seconds + 900)
                    if run.returncode != 0 or "tokens_per_sec" not in run.summary:
                        return fail("train.py", run)
                    if shape is None:
                        shape, batch = our_shape(run, ws)
                    ours_runs.append(run)
                else:
                    run = run_reference(shape, batch, args.seconds)
                    if run.returncode != 0 or "tokens_per_sec" not in run.summary:
                        return fail("reference", run)
                    ref_runs.append(run)

    # -- results --
    ours_fpt = ours_runs[0].flops_per_token
    ref_fpt = ref_runs[0].flops_per_token
    rows = []
    for name, runs, fpt in [("ours (train.py)", ours_runs, ours_fpt), ("reference GPT", ref_runs, ref_fpt)]:
        if name.startswith("ours"):
            steady = median([common.steady_tokens_per_sec(r.step_tokens_per_sec) for r in runs])
            warm = median([common.as_float(m.group(1)) for r in runs
                           if (m := re.search(r"Warm-up \(compilation\) took ([\d.]+)s", r.output))])
            own_mfu = median([r.value("mfu_percent") for r in runs])
        else:
            steady = median([r.value("steady_tokens_per_sec") for r in runs])
            warm = median([r.value("warmup_seconds") for r in runs])
            own_mfu = None
        avg = median([r.value("tokens_per_sec") for r in runs])
        rows.append(dict(
            name=name, fpt=fpt, steady=steady, avg=avg,
            mfu=100 * fpt * steady / peak if fpt and steady else None,
            own_mfu=own_mfu,
            steps=median([r.value("num_steps") for r in runs]),
            train_s=median([r.value("training_seconds") for r in runs]),
            warm=warm, wall=median([r.wall_seconds for r in runs]),
            rss=median([r.value("peak_rss_mb") for r in runs]),
        ))

    print()
    print(f"shape: depth {shape['n_layer']}, n_embd {shape['n_embd']}, {shape['n_head']} heads of "
          f"{shape['n_embd'] // shape['n_head']}, seq {shape['sequence_len']}, vocab {shape['vocab_size']}, "
          f"batch {batch} x {shape['sequence_len']}, fp32, torch.compile")
    header = (f"{'model':<16} {'FLOPs/tok':>10} {'tok/s steady':>13} {'tok/s avg':>10} {'MFU steady':>11} "
              f"{'steps':>6} {'train s':>8} {'warm-up s':>10} {'wall s':>7} {'peak RSS MB':>12}")
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['name']:<16} {fmt(row['fpt'], '10.3e')} {fmt(row['steady'], '13,.0f')} {fmt(row['avg'], '10,.0f')} "
              f"{fmt(row['mfu'], '10.2f') + '%':>11} {fmt(row['steps'], '6.0f')} {fmt(row['train_s'], '8.1f')} "
              f"{fmt(row['warm'], '10.1f')} {fmt(row['wall'], '7.1f')} {fmt(row['rss'], '12.0f')}")
    ours, ref = rows
    print()
    print(f"train.py's own mfu_percent (avg tokens/s, same peak): {fmt(ours['own_mfu'], '.2f')}%")
    if ours["avg"] and ref["avg"]:
        print(f"ratio tokens/s ours/reference (whole-run avg): {ours['avg'] / ref['avg']:.2f}")
    if ours["fpt"] and ref["fpt"]:
        print(f"ratio FLOPs/token ours/reference: {ours['fpt'] / ref['fpt']:.2f}")
    if ours["steady"] and ref["steady"]:
        print(f"ratio tokens/s ours/reference: {ours['steady'] / ref['steady']:.2f}")
    else:
        print("ratio tokens/s ours/reference: n/a")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
