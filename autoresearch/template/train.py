"""
The experiment: pretrain a small GPT for a fixed time budget. This is the one file the agent edits.

A port of karpathy/autoresearch's train.py that runs on CUDA, Apple MPS and CPU. Everything here is fair
game: the model, the optimizer, the hyperparameters, the loop. What is frozen comes from the harness:
the profile's constants, the tokenizer, the training data loader, the clock, and `submit`, which hands
the trained model to the harness to be scored out of process (val_bpb is never computed here).

Usage (inside a workspace made by `autoresearch init`):  python train.py
"""

import os
os.environ.setdefault("PYTORCH_ALLOC_CONF", "expandable_segments:True")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import ctypes
import gc
import math
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from autoresearch.harness import (
    MAX_SEQ_LEN, SEED, TIME_BUDGET, Tokenizer, TrainingClock, make_dataloader, peak_flops, peak_memory_mb,
    start_clock, submit,
)

# ---------------------------------------------------------------------------
# Hyperparameters (edit these directly, no CLI flags needed)
# ---------------------------------------------------------------------------
# The optuna agent tunes the constants between the two @autoresearch lines; without them it stops with an error.
# @autoresearch:hyperparameters-begin

# Model architecture
ASPECT_RATIO = 64        # model_dim = depth * ASPECT_RATIO (rounded up to a multiple of HEAD_DIM)
HEAD_DIM = 128           # target head dimension for attention
WINDOW_PATTERN = "SSSL"  # sliding-window pattern over layers: L = full context, S = half context

# Optimization
TOTAL_BATCH_SIZE = 2**19   # tokens per optimizer step
EMBEDDING_LR = 0.6         # learning rate for token embeddings (Adam)
UNEMBEDDING_LR = 0.004     # learning rate for lm_head (Adam)
MATRIX_LR = 0.04           # learning rate for matrix parameters (Muon)
SCALAR_LR = 0.5            # learning rate for per-layer scalars (Adam)
WEIGHT_DECAY = 0.2         # cautious weight decay for Muon, decayed linearly to 0
ADAM_BETAS = (0.8, 0.95)   # Adam beta1, beta2
WARMUP_RATIO = 0.0         # fraction of the time budget for LR warmup
WARMDOWN_RATIO = 0.5       # fraction of the time budget for LR warmdown
FINAL_LR_FRAC = 0.0        # final LR as a fraction of the initial LR

# Model size
DEPTH = 8                  # number of transformer layers
DEVICE_BATCH_SIZE = 128    # rows per forward/backward (reduce if out of memory)
# The random seed of weights and data order is SEED from the harness: 42, or another one when the harness
# repeats a run to measure noise. A seed that only got lucky does not survive the noise-aware keep rule.
# @autoresearch:hyperparameters-end

# ---------------------------------------------------------------------------
# Device: one place decides precision, kernels and compilation
# ---------------------------------------------------------------------------

@dataclass
class DeviceSetup:
    device: torch.device
    dtype: torch.dtype          # compute dtype of matmuls (autocast on CUDA) and of rotary tables
    compile_model: bool
    compile_optimizer: bool
    flash_attn: object          # FlashAttention-3 interface, or None for PyTorch SDPA


def load_flash_attention_3():
    """FA3 from the `kernels` hub on Hopper; None (SDPA) when unavailable."""
    try:
        from kernels import get_kernel
        major, minor = torch.cuda.get_device_capability()
        repo = "varunneal/flash-attention-3" if (major, minor) == (9, 0) else "kernels-community/flash-attn3"
        return get_kernel(repo).flash_attn_interface
    except Exception as e:  # no package, no network, unsupported GPU: SDPA is correct, just slower
        print(f"FlashAttention-3 unavailable ({type(e).__name__}: {e}); using SDPA")
        return None


def keep_freed_cpu_memory():
    """Make glibc reuse freed memory instead of handing it back to the OS (Linux only; no effect on results).

    By default glibc gives each large block (above a threshold that tops out at 32 MB, which the CPU
    profile's logits and their gradient exceed) a fresh mmap and unmaps it on free, and trims free heap
    above 128 KB, so every step page-faulted its big tensors in again: ~27k page faults and ~45 ms of
    kernel CPU time per step. Serving all blocks from a heap that is never trimmed keeps them mapped for
    reuse, as CUDA's caching allocator does for GPU memory (peak RSS grows by ~70 MB on the CPU profile)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters from glibc's <malloc.h>
    libc.mallopt(M_MMAP_MAX, 0)            # no mmap per block: large blocks come from the heap too
    libc.mallopt(M_TRIM_THRESHOLD, 2**30)  # keep up to 1 GB of free heap for reuse


CPU_COMPILE_WINDOW = 400  # seconds of training window above which torch.compile pays for itself on CPU


def autodetect_device():
    """CUDA > MPS > CPU. bf16 only where it is fast: on this kind of CPU bf16 matmul is ~100x slower."""
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
        return DeviceSetup(torch.device("cuda"), torch.bfloat16, True, True, load_flash_attention_3())
    if torch.backends.mps.is_available():
        return DeviceSetup(torch.device("mps"), torch.float32, False, False, None)
    keep_freed_cpu_memory()
    # The harness closes the training window at a time fixed from launch, so a cold torch.compile (measured
    # on 2 cores, cpu profile: 45 s, for 13% more tokens/s) is paid for in training time. It pays for itself
    # only in a window over ~400 s; by hand (no window yet) the clock starts after it, so it is free.
    window = TrainingClock(TIME_BUDGET).closes_in()
    return DeviceSetup(torch.device("cpu"), torch.float32, window is None or window > CPU_COMPILE_WINDOW, False, None)

# ---------------------------------------------------------------------------
# GPT model
# ---------------------------------------------------------------------------

@dataclass
class GPTConfig:
    sequence_len: int = 2048
    vocab_size: int = 32768
    n_layer: int = 12
    n_head: int = 6
    n_kv_head: int = 6
    n_embd: int = 768
    window_pattern: str = "SSSL"


def norm(x):
    return F.rms_norm(x, (x.size(-1),))


def has_value_embedding(layer_idx, n_layer):
    """Every other layer gets a value embedding, always including the last one."""
    return layer_idx % 2 == (n_layer - 1) % 2


def apply_rotary_emb(x, cos, sin):
    half = x.shape[3] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], 3)


def sdpa_attention(q, k, v, window):
    """Causal attention with PyTorch SDPA; a sliding window shorter than T becomes an explicit mask."""
    T = q.size(1)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    gqa = k.size(1) != q.size(1)
    if window >= T - 1:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    else:
        pos = torch.arange(T, device=q.device)
        distance = pos[:, None] - pos[None, :]
        mask = (distance >= 0) & (distance <= window)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    return y.transpose(1, 2)


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer_idx, flash_attn=None):
        super().__init__()
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head
        self.head_dim = config.n_embd // config.n_head
        assert config.n_embd % config.n_head == 0
        assert config.n_kv_head <= config.n_head and config.n_head % config.n_kv_head == 0
        self.c_q = nn.Linear(config.n_embd, self.n_head * self.head_dim, bias=False)
        self.c_k = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_v = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.ve_gate_channels = 32
        has_ve = has_value_embedding(layer_idx, config.n_layer)
        self.ve_gate = nn.Linear(self.ve_gate_channels, self.n_kv_head, bias=False) if has_ve else None
        self.flash_attn = flash_attn

    def forward(self, x, ve, cos_sin, window):
        B, T, C = x.size()
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)

        # Value residual (ResFormer): mix in the layer's value embedding through a per-head gate in (0, 2)
        if ve is not None:
            ve = ve.view(B, T, self.n_kv_head, self.head_dim)
            gate = 2 * torch.sigmoid(self.ve_gate(x[..., :self.ve_gate_channels]))
            v = v + gate.unsqueeze(-1) * ve

        cos, sin = cos_sin
        q, k = apply_rotary_emb(q, cos, sin), apply_rotary_emb(k, cos, sin)
        q, k = norm(q), norm(k)  # QK-norm

        if self.flash_attn is not None and not torch.compiler.is_exporting():
            y = self.flash_attn.flash_attn_func(q, k, v, causal=True, window_size=(window, 0))
        else:  # SDPA everywhere else, and always in the exported graph the harness scores
            y = sdpa_attention(q, k, v, window)
        return self.c_proj(y.contiguous().view(B, T, -1))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())  # ReLU²


class Block(nn.Module):
    def __init__(self, config, layer_idx, flash_attn=None):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer_idx, flash_attn)
        self.mlp = MLP(config)

    def forward(self, x, ve, cos_sin, window):
        x = x + self.attn(norm(x), ve, cos_sin, window)
        x = x + self.mlp(norm(x))
        return x


class GPT(nn.Module):
    def __init__(self, config, compute_dtype=torch.float32, flash_attn=None):
        super().__init__()
        self.config = config
        self.compute_dtype = compute_dtype
        self.windows = self.window_sizes(config)
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(config.vocab_size, config.n_embd),
            "h": nn.ModuleList([Block(config, i, flash_attn) for i in range(config.n_layer)]),
        })
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.resid_lambdas = nn.Parameter(torch.ones(config.n_layer))
        self.x0_lambdas = nn.Parameter(torch.zeros(config.n_layer))
        head_dim = config.n_embd // config.n_head
        kv_dim = config.n_kv_head * head_dim
        self.value_embeds = nn.ModuleDict({
            str(i): nn.Embedding(config.vocab_size, kv_dim)
            for i in range(config.n_layer) if has_value_embedding(i, config.n_layer)
        })
        self.rotary_seq_len = config.sequence_len * 10
        cos, sin = self.rotary_tables(self.rotary_seq_len, head_dim)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    @torch.no_grad()
    def init_weights(self):
        n_embd = self.config.n_embd
        torch.nn.init.normal_(self.transformer.wte.weight, mean=0.0, std=1.0)
        torch.nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.001)
        bound = 3**0.5 * n_embd**-0.5  # uniform with the std of a 1/sqrt(fan_in) normal
        for block in self.transformer.h:
            for linear in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                torch.nn.init.uniform_(linear.weight, -bound, bound)
            torch.nn.init.zeros_(block.attn.c_proj.weight)  # every block starts as the identity
            torch.nn.init.zeros_(block.mlp.c_proj.weight)
            if block.attn.ve_gate is not None:
                torch.nn.init.zeros_(block.attn.ve_gate.weight)  # gate = 2*sigmoid(0) = 1: neutral
        self.resid_lambdas.fill_(1.0)
        self.x0_lambdas.fill_(0.1)
        for ve in self.value_embeds.values():
            torch.nn.init.uniform_(ve.weight, -bound, bound)
        self.cos, self.sin = self.rotary_tables(self.rotary_seq_len, n_embd // self.config.n_head)
        if self.compute_dtype == torch.bfloat16:  # embeddings are stored in bf16 where bf16 is fast
            self.transformer.wte.to(dtype=torch.bfloat16)
            for ve in self.value_embeds.values():
                ve.to(dtype=torch.bfloat16)

    def rotary_tables(self, seq_len, head_dim, base=10000):
        device = self.transformer.wte.weight.device
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
        freqs = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), inv_freq)
        cos, sin = freqs.cos().to(self.compute_dtype), freqs.sin().to(self.compute_dtype)
        return cos[None, :, None, :], sin[None, :, None, :]

    @staticmethod
    def window_sizes(config):
        pattern = config.window_pattern.upper()
        assert pattern and all(c in "SL" for c in pattern), f"bad WINDOW_PATTERN {pattern!r}"
        long_window, short_window = config.sequence_len, config.sequence_len // 2
        windows = [long_window if pattern[i % len(pattern)] == "L" else short_window for i in range(config.n_layer)]
        windows[-1] = long_window  # the last layer always sees the full context
        return windows

    def estimate_flops(self):
        """FLOPs per token for forward + backward: 6 per matmul weight plus attention."""
        nparams = sum(p.numel() for p in self.parameters())
        embeddings = self.transformer.wte.weight.numel() + sum(ve.weight.numel() for ve in self.value_embeds.values())
        scalars = self.resid_lambdas.numel() + self.x0_lambdas.numel()
        head_dim = self.config.n_embd // self.config.n_head
        attn = sum(12 * self.config.n_head * head_dim * min(w, self.config.sequence_len) for w in self.windows)
        return 6 * (nparams - embeddings - scalars) + attn

    def num_scaling_params(self):
        counts = {
            "wte": self.transformer.wte.weight.numel(),
            "value_embeds": sum(p.numel() for p in self.value_embeds.parameters()),
            "lm_head": self.lm_head.weight.numel(),
            "transformer_matrices": sum(p.numel() for p in self.transformer.h.parameters()),
            "scalars": self.resid_lambdas.numel() + self.x0_lambdas.numel(),
        }
        counts["total"] = sum(counts.values())
        return counts

    def setup_optimizer(self, unembedding_lr=0.004, embedding_lr=0.2, matrix_lr=0.02, weight_decay=0.0,
                        adam_betas=(0.8, 0.95), scalar_lr=0.5, ortho_dtype=torch.bfloat16, compiled=True):
        matrix_params = list(self.transformer.h.parameters())
        groups = {
            "lm_head": list(self.lm_head.parameters()),
            "wte": list(self.transformer.wte.parameters()),
            "value_embeds": list(self.value_embeds.parameters()),
        }
        assert sum(map(len, groups.values())) + len(matrix_params) + 2 == len(list(self.parameters()))
        # AdamW learning rates were tuned at width 768 and scale as 1/sqrt(width)
        lr_scale = (self.config.n_embd / 768) ** -0.5
        print(f"Scaling AdamW LRs by 1/sqrt({self.config.n_embd}/768) = {lr_scale:.6f}")
        adam = dict(kind="adamw", betas=adam_betas, eps=1e-10, weight_decay=0.0)
        param_groups = [
            dict(adam, params=groups["lm_head"], lr=unembedding_lr * lr_scale),
            dict(adam, params=groups["wte"], lr=embedding_lr * lr_scale),
            dict(adam, params=groups["value_embeds"], lr=embedding_lr * lr_scale),
            dict(adam, params=[self.resid_lambdas], lr=scalar_lr * 0.01),
            dict(adam, params=[self.x0_lambdas], lr=scalar_lr, betas=(0.96, 0.95)),
        ]
        for shape in sorted({p.shape for p in matrix_params}):  # Muon steps same-shaped matrices together
            param_groups.append(dict(kind="muon", params=[p for p in matrix_params if p.shape == shape],
                                     lr=matrix_lr, momentum=0.95, ns_steps=5, beta2=0.95, weight_decay=weight_decay))
        optimizer = MuonAdamW(param_groups, ortho_dtype=ortho_dtype, compiled=compiled)
        for group in optimizer.param_groups:
            group["initial_lr"] = group["lr"]
        return optimizer

    def forward(self, idx, targets=None, reduction="mean"):
        B, T = idx.size()
        assert T <= self.cos.size(1)
        cos_sin = self.cos[:, :T], self.sin[:, :T]
        x = norm(self.transformer.wte(idx))
        x0 = x
        for i, block in enumerate(self.transformer.h):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None
            x = block(x, ve, cos_sin, self.windows[i])
        x = norm(x)
        softcap = 15
        logits = self.lm_head(x).float()
        if logits.device.type == "cpu":  # the same function, as tanh(z) = 2 sigmoid(2z) - 1 (equal up to float
            # rounding, < 4e-6 here), because torch.compile's exact CPU tanh is several times slower than sigmoid
            logits = 2 * softcap * torch.sigmoid(logits * (2 / softcap)) - softcap
        else:
            logits = softcap * torch.tanh(logits / softcap)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1, reduction=reduction)

# ---------------------------------------------------------------------------
# Optimizer: MuonAdamW (Muon with Polar Express + NorMuon for matrices, AdamW for the rest)
# ---------------------------------------------------------------------------

# Polar Express coefficients (Amsel et al., 2025): one (a, b, c) per orthogonalization iteration
POLAR_EXPRESS_COEFFS = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]


def adamw_step(p, grad, exp_avg, exp_avg_sq, step_t, lr_t, beta1_t, beta2_t, eps_t, wd_t):
    p.mul_(1 - lr_t * wd_t)
    exp_avg.lerp_(grad, 1 - beta1_t)
    exp_avg_sq.lerp_(grad.square(), 1 - beta2_t)
    bias1 = 1 - beta1_t ** step_t
    bias2 = 1 - beta2_t ** step_t
    denom = (exp_avg_sq / bias2).sqrt() + eps_t
    p.sub_((lr_t / bias1) * exp_avg / denom)


def muon_step(grads, params, momentum_buffer, second_momentum_buffer, momentum_t, lr_t, wd_t, beta2_t,
              ns_steps, red_dim, ortho_dtype):
    # Nesterov momentum
    momentum = momentum_t.to(grads.dtype)
    momentum_buffer.lerp_(grads, 1 - momentum)
    g = grads.lerp_(momentum_buffer, momentum)
    # Polar Express: drive the update towards the nearest orthogonal matrix
    X = g.to(ortho_dtype)
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * 1.02 + 1e-6)
    tall = g.size(-2) > g.size(-1)
    for a, b, c in POLAR_EXPRESS_COEFFS[:ns_steps]:
        A = X.mT @ X if tall else X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + (X @ B if tall else B @ X)
    g = X
    # NorMuon: per-row (or per-column) second-moment normalization that keeps the update's norm
    beta2 = beta2_t.to(g.dtype)
    v_mean = g.float().square().mean(dim=red_dim, keepdim=True)
    red_size = g.size(red_dim)
    v_norm = (v_mean.sum(dim=(-2, -1), keepdim=True) * red_size).sqrt()
    second_momentum_buffer.lerp_(v_mean.to(second_momentum_buffer.dtype), 1 - beta2)
    step_size = second_momentum_buffer.clamp_min(1e-10).rsqrt()
    v_norm_new = ((v_mean * red_size) * step_size.float().square()).sum(dim=(-2, -1), keepdim=True).sqrt()
    g = g * (step_size * (v_norm / v_norm_new.clamp_min(1e-10))).to(g.dtype)
    # Cautious weight decay (only where the update and the weight agree in sign), then the update
    lr, wd = lr_t.to(g.dtype), wd_t.to(g.dtype)
    mask = (g * params) >= 0
    params.sub_(lr * g + lr * wd * params * mask)


class MuonAdamW(torch.optim.Optimizer):
    """Muon for the 2D matrices of the blocks, AdamW for embeddings, lm_head and scalars (one device)."""

    def __init__(self, param_groups, ortho_dtype=torch.bfloat16, compiled=True):
        super().__init__(param_groups, defaults={})
        self.ortho_dtype = ortho_dtype
        compile_fn = (lambda f: torch.compile(f, dynamic=False, fullgraph=True)) if compiled else (lambda f: f)
        self._adamw_step, self._muon_step = compile_fn(adamw_step), compile_fn(muon_step)
        # hyperparameters live in 0-d CPU tensors so a changing value never triggers a recompile
        names = ["step", "lr", "beta1", "beta2", "eps", "wd", "momentum", "muon_lr", "muon_wd", "muon_beta2"]
        self._t = {name: torch.tensor(0.0, dtype=torch.float32) for name in names}

    def _step_adamw(self, group):
        t = self._t
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            t["step"].fill_(state["step"])
            t["lr"].fill_(group["lr"])
            t["beta1"].fill_(group["betas"][0])
            t["beta2"].fill_(group["betas"][1])
            t["eps"].fill_(group["eps"])
            t["wd"].fill_(group["weight_decay"])
            self._adamw_step(p, p.grad, state["exp_avg"], state["exp_avg_sq"],
                             t["step"], t["lr"], t["beta1"], t["beta2"], t["eps"], t["wd"])

    def _step_muon(self, group):
        params = group["params"]
        if not params or params[0].grad is None:
            return
        shape, state = params[0].shape, self.state[params[0]]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros(len(params), *shape, dtype=params[0].dtype, device=params[0].device)
            stat_shape = (len(params), shape[-2], 1) if shape[-2] >= shape[-1] else (len(params), 1, shape[-1])
            state["second_momentum_buffer"] = torch.zeros(stat_shape, dtype=params[0].dtype, device=params[0].device)
        red_dim = -1 if shape[-2] >= shape[-1] else -2
        stacked = torch.stack(list(params))
        t = self._t
        t["momentum"].fill_(group["momentum"])
        t["muon_beta2"].fill_(group["beta2"] if group["beta2"] is not None else 0.0)
        t["muon_lr"].fill_(group["lr"] * max(1.0, shape[-2] / shape[-1]) ** 0.5)
        t["muon_wd"].fill_(group["weight_decay"])
        self._muon_step(torch.stack([p.grad for p in params]), stacked, state["momentum_buffer"],
                        state["second_momentum_buffer"], t["momentum"], t["muon_lr"], t["muon_wd"],
                        t["muon_beta2"], group["ns_steps"], red_dim, self.ortho_dtype)
        torch._foreach_copy_(params, list(stacked.unbind(0)))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            if group["kind"] == "adamw":
                self._step_adamw(group)
            else:
                self._step_muon(group)

# ---------------------------------------------------------------------------
# Setup: device, tokenizer, model, optimizer, data
# ---------------------------------------------------------------------------

t_start = time.time()
setup = autodetect_device()
device = setup.device
torch.manual_seed(SEED)
autocast_ctx = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=setup.dtype == torch.bfloat16)
print(f"Device: {device} | compute dtype: {setup.dtype} | compile model: {setup.compile_model} | "
      f"attention: {'FlashAttention-3' if setup.flash_attn is not None else 'SDPA'}")

tokenizer = Tokenizer.from_directory()
vocab_size = tokenizer.get_vocab_size()
print(f"Vocab size: {vocab_size:,}")


def build_model_config(depth):
    model_dim = ((depth * ASPECT_RATIO + HEAD_DIM - 1) // HEAD_DIM) * HEAD_DIM
    num_heads = model_dim // HEAD_DIM
    return GPTConfig(sequence_len=MAX_SEQ_LEN, vocab_size=vocab_size, n_layer=depth, n_head=num_heads,
                     n_kv_head=num_heads, n_embd=model_dim, window_pattern=WINDOW_PATTERN)


config = build_model_config(DEPTH)
print(f"Model config: {asdict(config)}")
with torch.device("meta"):
    model = GPT(config, compute_dtype=setup.dtype, flash_attn=setup.flash_attn)
model.to_empty(device=device)
model.init_weights()

param_counts = model.num_scaling_params()
print("Parameter counts:")
for key, value in param_counts.items():
    print(f"  {key:24s}: {value:,}")
num_params = param_counts["total"]
num_flops_per_token = model.estimate_flops()
print(f"Estimated FLOPs per token: {num_flops_per_token:e}")

tokens_per_fwdbwd = DEVICE_BATCH_SIZE * MAX_SEQ_LEN
assert TOTAL_BATCH_SIZE % tokens_per_fwdbwd == 0, "TOTAL_BATCH_SIZE must be a multiple of DEVICE_BATCH_SIZE * MAX_SEQ_LEN"
grad_accum_steps = TOTAL_BATCH_SIZE // tokens_per_fwdbwd

optimizer = model.setup_optimizer(
    unembedding_lr=UNEMBEDDING_LR, embedding_lr=EMBEDDING_LR, scalar_lr=SCALAR_LR, adam_betas=ADAM_BETAS,
    matrix_lr=MATRIX_LR, weight_decay=WEIGHT_DECAY,
    ortho_dtype=setup.dtype, compiled=setup.compile_optimizer,
)
train_model = torch.compile(model, dynamic=False) if setup.compile_model else model

train_loader = make_dataloader(tokenizer, DEVICE_BATCH_SIZE, MAX_SEQ_LEN, "train", device=device, seed=SEED)
x, y, epoch = next(train_loader)
print(f"Time budget: {TIME_BUDGET}s")
print(f"Gradient accumulation steps: {grad_accum_steps}")


def sync():
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


# Warm-up: compile forward, backward and optimizer before the clock starts. Every learning rate is 0 and
# the optimizer state is cleared afterwards, so no training happens outside the budget.
t_warm = time.time()
for group in optimizer.param_groups:
    group["lr"] = 0.0
with autocast_ctx:
    train_model(x, y).backward()
optimizer.step()
model.zero_grad(set_to_none=True)
optimizer.state.clear()
sync()
print(f"Warm-up (compilation) took {time.time() - t_warm:.1f}s")

# Schedules, all driven by progress = training time / TIME_BUDGET


def get_lr_multiplier(progress):
    if progress < WARMUP_RATIO:
        return progress / WARMUP_RATIO if WARMUP_RATIO > 0 else 1.0
    if progress < 1.0 - WARMDOWN_RATIO:
        return 1.0
    cooldown = (1.0 - progress) / WARMDOWN_RATIO
    return cooldown + (1 - cooldown) * FINAL_LR_FRAC


def get_muon_momentum(step):
    frac = min(step / 300, 1)
    return (1 - frac) * 0.85 + frac * 0.95


def get_weight_decay(progress):
    return WEIGHT_DECAY * (1 - progress)

# ---------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------

peak = peak_flops(device)
clock = start_clock()
t_start_training = time.time()
smooth_train_loss = 0.0
step = 0

while True:
    sync()
    t0 = time.time()
    for micro_step in range(grad_accum_steps):
        with autocast_ctx:
            loss = train_model(x, y)
        train_loss = loss.detach()
        (loss / grad_accum_steps).backward()
        x, y, epoch = next(train_loader)

    progress = clock.progress()
    lrm = get_lr_multiplier(progress)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * lrm
        if group["kind"] == "muon":
            group["momentum"] = get_muon_momentum(step)
            group["weight_decay"] = get_weight_decay(progress)
    optimizer.step()
    model.zero_grad(set_to_none=True)

    train_loss_f = train_loss.item()
    if math.isnan(train_loss_f) or train_loss_f > 100:  # fast fail: NaN or exploding loss
        print(f"\nFAIL: training loss is {train_loss_f} at step {step} (NaN or exploding)")
        sys.exit(1)

    sync()
    dt = time.time() - t0
    ema_beta = 0.9
    smooth_train_loss = ema_beta * smooth_train_loss + (1 - ema_beta) * train_loss_f
    debiased_loss = smooth_train_loss / (1 - ema_beta ** (step + 1))
    tok_per_sec = int(TOTAL_BATCH_SIZE / dt)
    mfu = f"{100 * num_flops_per_token * TOTAL_BATCH_SIZE / dt / peak:.1f}%" if peak else "n/a"
    print(f"\rstep {step:05d} ({100 * progress:.1f}%) | loss: {debiased_loss:.6f} | lrm: {lrm:.2f} | "
          f"dt: {dt * 1000:.0f}ms | tok/sec: {tok_per_sec:,} | mfu: {mfu} | epoch: {epoch} | "
          f"remaining: {clock.remaining():.0f}s    ", end="", flush=True)

    if step == 0:  # Python's GC causes long stalls; freeze what exists and collect rarely
        gc.collect()
        gc.freeze()
        gc.disable()
    elif (step + 1) % 5000 == 0:
        gc.collect()

    step += 1
    if clock.done():
        break

print()
training_seconds = clock.elapsed()
total_tokens = step * TOTAL_BATCH_SIZE
memory_mb = peak_memory_mb(device)

# ---------------------------------------------------------------------------
# Hand the model to the harness, then the summary
# ---------------------------------------------------------------------------

result = submit(model)
val_bpb = result["val_bpb"]
t_end = time.time()
mfu = 100 * num_flops_per_token * total_tokens / training_seconds / peak if peak else None

print("---")
print(f"val_bpb:          {val_bpb:.6f}" if val_bpb is not None else "val_bpb:          (scored by the harness)")
print(f"training_seconds: {training_seconds:.1f}")
print(f"total_seconds:    {t_end - t_start:.1f}")
print(f"startup_seconds:  {t_start_training - t_start:.1f}")
memory_key = "peak_vram_mb:" if device.type == "cuda" else "peak_rss_mb:"
print(f"{memory_key:18s}{memory_mb:.1f}")
print(f"mfu_percent:      {mfu:.2f}" if mfu is not None else "mfu_percent:      unknown (no peak FLOPs known for this device)")
print(f"tokens_per_sec:   {total_tokens / training_seconds:.0f}")
print(f"total_tokens_M:   {total_tokens / 1e6:.1f}")
print(f"num_steps:        {step}")
print(f"num_params_M:     {num_params / 1e6:.1f}")
print(f"depth:            {DEPTH}")
print(f"device:           {device.type}")
