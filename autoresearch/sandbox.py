"""The sandbox train.py and the evaluator run in, where the OS allows: bubblewrap (Debian's `bubblewrap`).

What train.py sees inside:
  - the whole file system read-only, no network, its own PID namespace (train.py is PID 1: when it
    exits, every process it started dies with it; nothing outlives the run);
  - of the workspace only `train.py` and `autoresearch.toml` (no ledger, no results.tsv, no .git, no
    other runs), plus its own run folder, writable;
  - of the data cache only what training needs (tokenizer, token-bytes table, the train split): the
    validation and test splits, the raw downloads and the packaged corpus are not there at all;
  - a private temp dir inside its run folder, and the torch compile cache, writable.
The evaluator gets the same read-only, offline view with all the data, and writes only its result.

`mode`: "auto" (sandbox when bubblewrap works, else run bare and say so), "require" (refuse to run bare),
"off". Without the sandbox the harness still detects tampering after the fact (see tripwire.py).
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

from .harness.paths import cache_dir, prepared_dir, raw_dir

MODES = ("auto", "require", "off")
MODE_ENV = "AUTORESEARCH_SANDBOX"
TRAIN_FILES = ("manifest.json", "tokenizer.json", "token_bytes.npy", "train.bin", "train.idx.npy")
_BASE = ["--ro-bind", "/", "/", "--dev-bind", "/dev", "/dev", "--proc", "/proc", "--tmpfs", "/dev/shm",
         "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--die-with-parent", "--as-pid-1"]


class SandboxError(RuntimeError):
    pass


@lru_cache(maxsize=1)
def probe() -> str:
    """"" when bubblewrap can build our sandbox here, else why not (checked once per process)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bubblewrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    try:
        done = subprocess.run([bwrap, *_BASE, "true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bubblewrap failed to start: {e}"
    if done.returncode != 0:
        return "bubblewrap cannot create namespaces here: " + (done.stderr.strip() or f"exit {done.returncode}")
    return ""


def resolve(mode: str | None = None) -> str:
    """The sandbox actually used: "bwrap" or "none"; raises when `require` cannot be met."""
    mode = mode or os.environ.get(MODE_ENV) or "auto"
    if mode not in MODES:
        raise SandboxError(f"unknown sandbox mode {mode!r} (known: {', '.join(MODES)})")
    if mode == "off":
        return "none"
    why = probe()
    if why and mode == "require":
        raise SandboxError(f"the sandbox is required but unavailable: {why}")
    return "none" if why else "bwrap"


def compile_cache() -> Path:
    """Where torch.compile keeps its cache; the same place a bare run uses, so a warm cache stays warm."""
    path = Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or
                Path(tempfile.gettempdir()) / f"torchinductor_{getpass.getuser()}")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _hide(path: Path) -> list[str]:
    return ["--tmpfs", str(path)] if path.exists() else []


def _package_corpus() -> Path:
    from .harness import embedded

    return Path(embedded.__file__).parent / "corpus"


def train_command(cmd: list[str], workspace: Path, run_dir: Path, profile_name: str, dataset: str,
                  env: dict) -> list[str]:
    """`cmd` (train.py) wrapped in the sandbox; `env` gains TMPDIR and the compile cache location."""
    tmp = run_dir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    cache = compile_cache()
    env.update(TMPDIR=str(tmp), TORCHINDUCTOR_CACHE_DIR=str(cache), TRITON_CACHE_DIR=str(cache / "triton"),
               HF_HUB_OFFLINE="1")  # no network inside: kernels (FA3 on CUDA) come from the local hub cache
    args = ["bwrap", *_BASE]
    args += ["--tmpfs", str(workspace)]
    for name in ("train.py", "autoresearch.toml"):
        args += ["--ro-bind", str(workspace / name), str(workspace / name)]
    args += ["--bind", str(run_dir), str(run_dir)]
    args += _hide(cache_dir())
    data = prepared_dir(profile_name)
    for name in TRAIN_FILES:
        if (data / name).exists():
            args += ["--ro-bind", str(data / name), str(data / name)]
    args += _hide(_package_corpus()) + _hide(raw_dir(dataset))
    args += ["--bind", str(cache), str(cache)]
    args += ["--remount-ro", str(workspace)]  # the stand-in folders are empty and read-only, too
    if cache_dir().exists():
        args += ["--remount-ro", str(cache_dir())]
    args += ["--chdir", str(workspace), "--"]
    return args + cmd


def eval_command(cmd: list[str], out_dir: Path, env: dict) -> list[str]:
    """The evaluator wrapped in a read-only, offline sandbox that may write only `out_dir`."""
    tmp = out_dir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env.update(TMPDIR=str(tmp))
    return ["bwrap", *_BASE, "--bind", str(out_dir), str(out_dir), "--chdir", str(out_dir), "--"] + cmd
