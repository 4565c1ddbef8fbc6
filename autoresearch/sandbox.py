"""The sandbox train.py and the evaluator run in, where the OS allows: bubblewrap (Debian's `bubblewrap`).

An allowlist, not a denylist: the sandbox starts from an empty root and binds in only what is named here.
What train.py sees:
  - the Python runtime, read-only: the system folders (/usr, /bin, /lib...), the few files of /etc that
    the dynamic loader and the compiler driver read, the interpreter's prefix (its stdlib and
    site-packages), and the `autoresearch` package folder itself (an editable install maps it from a
    source checkout: only the package folder is bound, never the checkout and its .git), with the
    packaged corpus folder hidden;
  - of the workspace only `train.py` and `autoresearch.toml`; of the data cache only the tokenizer, the
    token-bytes table and the train split; its own run folder, writable;
  - a private /tmp (and /dev/shm) in memory that ends with the sandbox: HOME, the torch compile cache and
    every other cache point there, so nothing train.py writes outlives its experiment except its run
    folder, which the harness reads and no later run can see;
  - a minimal /dev (null, zero, random, ...; on CUDA the /dev/nvidia* nodes), its own /proc, no network,
    its own PID namespace (train.py is PID 1: when it exits, every process it started dies with it).
It runs as an unprivileged user in its own user namespace with every capability dropped, `no_new_privs`
set and further user namespaces disabled, so it can neither remount, unmount nor write what it was given
read-only, even when the harness itself runs as root (CI). The evaluator gets the same runtime (the
package whole), the workspace's settings and the prepared data it scores, starts in an empty /tmp (so
nothing in the run folder is on its import path) and writes only its run folder.

A task's evaluator may be given the network (task.toml `evaluate_network = true`, for a grader behind an
endpoint): then it shares the host's network (its loopback included) and sees the few files of /etc that
name resolution and TLS read; it still writes only its output folder. The run never has the network.

`mode`: "auto" (sandbox when bubblewrap works, else run bare and say so), "require" (refuse to run bare),
"off". Without the sandbox the harness still detects tampering after the fact (see tripwire.py).
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

from . import layout
from .harness.paths import cache_dir, prepared_dir
from .harness.settings import SETTINGS_FILE, Settings

MODES = ("auto", "require", "off")
MODE_ENV = "AUTORESEARCH_SANDBOX"
TRAIN_FILES = ("manifest.json", "tokenizer.json", "token_bytes.npy", "train.bin", "train.idx.npy")
USER, UID, GID = "sandbox", 1000, 1000  # train.py's identity inside; outside it is the harness's own uid
SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime")  # loader, cc -> gcc, time
TOOLS = ("CC", "CXX", "CUDA_HOME", "CUDA_PATH", "TRITON_PTXAS_PATH", "TRITON_LIBCUDA_PATH")  # compilers, CUDA
# DNS and TLS, with the network: the public certificates only (never /etc/ssl/private, /etc/pki/tls/private)
NET_ETC = ("resolv.conf", "hosts", "host.conf", "nsswitch.conf", "gai.conf", "services", "protocols",
           "ssl/certs", "ssl/openssl.cnf", "ca-certificates", "ca-certificates.conf", "pki/tls/certs",
           "pki/tls/cert.pem", "pki/tls/openssl.cnf", "pki/ca-trust/extracted", "crypto-policies")
TMP = "/tmp"
_ISOLATION = ["--unshare-user", "--disable-userns", "--uid", str(UID), "--gid", str(GID), "--cap-drop", "ALL",
              "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
              "--die-with-parent", "--as-pid-1"]
_SEAL = ["--remount-ro", "/"]  # the folders bwrap made on its own root to mount things on: read-only too


class SandboxError(RuntimeError):
    pass


# ---------------------------------------------------------------------------
# Can it run here?

@lru_cache(maxsize=1)
def probe() -> str:
    """"" when bubblewrap can build our sandbox here and Python imports autoresearch in it, else why not
    (checked once per process)."""
    if not sys.platform.startswith("linux"):
        return f"the sandbox needs Linux (bubblewrap); this is {sys.platform}"
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bubblewrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    cmd = [bwrap, *_base(), *_SEAL, "--", sys.executable, "-c", "import autoresearch"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bubblewrap failed to start: {e}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        return f"bubblewrap cannot build the sandbox here (are user namespaces disabled?): {last}"
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


def unenforced_reason(mode: str | None = None) -> str:
    """Why train.py runs without the sandbox under `mode` (for `run` to say at start), "" when it is
    sandboxed. Raises like `resolve` for an unknown mode or an unmet `require`."""
    if resolve(mode) == "bwrap":
        return ""
    if (mode or os.environ.get(MODE_ENV) or "auto") == "off":
        return "the sandbox is off (--sandbox off): train.py can read and write whatever this user can"
    return f"no sandbox: {probe()}"


# ---------------------------------------------------------------------------
# What is bound in

def package_dir() -> Path:
    """The `autoresearch` package folder this process imports (an editable install: inside its checkout)."""
    import autoresearch

    return Path(autoresearch.__file__).absolute().parent


def _ro(path: Path | str) -> list[str]:
    return ["--ro-bind", str(path), str(path)] if os.path.exists(path) else []


def _system(path: str) -> list[str]:
    """/lib and friends: a symlink (merged /usr) is made again inside, a folder is bound read-only."""
    return ["--symlink", os.readlink(path), path] if os.path.islink(path) else _ro(path)


def _inside(path: str, folder: str) -> bool:
    return path != folder and path.startswith(folder.rstrip("/") + "/")


def _python_roots() -> list[str]:
    """The interpreter's prefixes (its stdlib; the site-packages of a venv and of its base) and the
    user's site-packages, less the system folders and what lies inside one of them or of each other."""
    roots = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix, *site.getsitepackages()}
    if site.ENABLE_USER_SITE:
        roots.add(site.getusersitepackages())
    roots = {r for r in roots if os.path.isdir(r)}
    return sorted(r for r in roots if r not in SYSTEM and not any(_inside(r, o) for o in (*roots, *SYSTEM)))


def _tools() -> list[str]:
    """The toolchains the environment names (CC=/opt/gcc/bin/gcc: /opt/gcc; CUDA_HOME) where they lie outside
    the system folders: torch.compile runs the compiler (Triton builds its launcher with CC)."""
    found = set()
    for name in TOOLS:
        path = shutil.which(os.environ.get(name, "")) or os.environ.get(name, "")
        if os.path.isabs(path) and os.path.exists(path):
            path = os.path.realpath(path)
            found.add(str(Path(path).parent.parent) if Path(path).parent.name == "bin" else path)
    homes = (str(package_dir()), str(Path.home()), str(cache_dir()))
    return sorted(p for p in found if not any(p == s or _inside(p, s) for s in SYSTEM)
                  and not any(h == p or _inside(h, p) for h in homes))


def _runtime() -> list[str]:
    """Read-only binds that let the interpreter start and import autoresearch, torch and their libraries."""
    args = [a for path in SYSTEM for a in _system(path)]
    args += [a for name in ETC for a in _ro(Path("/etc") / name)]
    args += [a for root in (*_python_roots(), *_tools()) for a in _ro(root)]
    return args + _ro(package_dir())


def _hub_cache() -> Path:
    """The Hugging Face hub cache (where `kernels` keeps FA3), found as huggingface_hub finds it."""
    if path := os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(path)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(os.environ.get("HF_HOME") or cache / "huggingface") / "hub"


def _base(network: bool = False) -> list[str]:
    """The isolation, then (first, so that nothing bound later is covered) a minimal /dev, /proc, a private
    /tmp and /dev/shm, then the runtime; on CUDA the device nodes and a read-only /sys (the driver reads
    it), and the hub's downloaded models, read-only (not HF_HOME: it holds the user's token). `network`:
    the host's network is kept (no --unshare-net) and the files of /etc that DNS and TLS read are bound."""
    gpus = sorted(str(p) for p in Path("/dev").glob("nvidia*"))
    isolation = [a for a in _ISOLATION if not (network and a == "--unshare-net")]
    args = [*isolation, "--dev", "/dev", "--proc", "/proc", "--tmpfs", TMP, "--tmpfs", "/dev/shm"]
    args += _runtime() + [a for node in gpus for a in ("--dev-bind", node, node)] + (_ro("/sys") if gpus else [])
    args += [a for name in NET_ETC for a in _ro(Path("/etc") / name)] if network else []
    return args + [a for model in sorted(_hub_cache().glob("models--*")) for a in _ro(model)]


def _private(env: dict) -> None:
    """Point HOME, TMPDIR and every cache at the sandbox's own /tmp, which ends with it."""
    env.update(HOME=TMP, TMPDIR=TMP, USER=USER, LOGNAME=USER, XDG_CACHE_HOME=f"{TMP}/.cache",
               TORCHINDUCTOR_CACHE_DIR=f"{TMP}/torchinductor", TRITON_CACHE_DIR=f"{TMP}/triton",
               HF_HUB_CACHE=str(_hub_cache()), HF_HUB_OFFLINE="1")  # no network inside: kernels from the cache


# ---------------------------------------------------------------------------
# The two commands

def _only(folder: Path, *binds: list[str]) -> list[str]:
    """`folder` as an empty read-only stand-in holding only `binds` (which may be writable themselves)."""
    return ["--tmpfs", str(folder), *(a for b in binds for a in b), "--remount-ro", str(folder)]


def train_command(cmd: list[str], workspace: Path, run_dir: Path, profile_name: str, dataset: str,
                  env: dict) -> list[str]:
    """`cmd` (train.py) wrapped in the sandbox; `env` gains HOME, TMPDIR and the cache locations.
    (`dataset` is not used: nothing of the raw downloads is bound.)"""
    corpus, data = package_dir() / "harness" / "corpus", prepared_dir(profile_name)
    args = ["bwrap", *_base(), *(_only(corpus) if corpus.is_dir() else [])]
    args += _only(data, *(_ro(data / name) for name in TRAIN_FILES))
    args += _only(workspace, _ro(workspace / layout.CANDIDATE), _ro(workspace / SETTINGS_FILE),
                  ["--bind", str(run_dir), str(run_dir)])
    _private(env)
    return args + [*_SEAL, "--chdir", str(workspace), "--", *cmd]


def eval_command(cmd: list[str], out_dir: Path, env: dict, workspace: Path | None = None,
                 profile_name: str | None = None) -> list[str]:
    """The evaluator wrapped in a read-only, offline sandbox that may write only `out_dir`. Without
    `workspace` and `profile_name`, both are read off the evaluator's own command line."""
    workspace = workspace or Path(cmd[cmd.index("--workspace") + 1])
    data = prepared_dir(profile_name or Settings.load(workspace).profile.name)
    args = ["bwrap", *_base(), *_ro(data)]
    args += _only(workspace, _ro(workspace / SETTINGS_FILE), ["--bind", str(out_dir), str(out_dir)])
    _private(env)
    return args + [*_SEAL, "--chdir", TMP, "--", *cmd]


# ---------------------------------------------------------------------------
# A task's two commands (task.py): the same isolation, other binds

def _concealed(entries: tuple[str, ...]) -> list[str]:
    """Parts of installed packages hidden from a task's run (`conceal = ["sklearn/datasets/data"]`): an empty
    read-only folder (or /dev/null for a file) is put over each."""
    import importlib.util

    args = []
    for entry in entries:
        top, _, rest = entry.partition("/")
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            spec = None
        for location in (spec.submodule_search_locations or []) if spec else []:
            path = Path(location) / rest
            if path.is_dir():
                args += ["--tmpfs", str(path), "--remount-ro", str(path)]
            elif path.is_file():
                args += ["--ro-bind", "/dev/null", str(path)]
    return args


def task_run_command(cmd: list[str], workspace: Path, run_dir: Path, files: list[str], data_dir: Path,
                     conceal: tuple[str, ...], env: dict) -> list[str]:
    """A task's `run` in the sandbox: of the workspace only `files` (the editable and readable ones),
    read-only; of the task's data only public/ (the train split), read-only; its run folder, writable."""
    corpus = package_dir() / "harness" / "corpus"
    args = ["bwrap", *_base(), *(_only(corpus) if corpus.is_dir() else []), *_concealed(conceal)]
    args += _only(data_dir, _ro(data_dir / "public"))
    args += _only(workspace, *(_ro(workspace / name) for name in files), ["--bind", str(run_dir), str(run_dir)])
    _private(env)
    return args + [*_SEAL, "--chdir", str(workspace), "--", *cmd]


def task_eval_command(cmd: list[str], workspace: Path, data_dir: Path, candidate: Path, out_dir: Path,
                      env: dict, network: bool = False) -> list[str]:
    """A task's frozen evaluator in the sandbox: the workspace (its own files, the run folder), the task's
    data (hidden/ included) and the copy of the candidate's files, read-only; it writes only `out_dir`.
    `network` (task.toml's evaluate_network): the host's network, for a grader behind an endpoint."""
    args = ["bwrap", *_base(network), *_ro(data_dir), *_ro(workspace), *_ro(candidate),
            "--bind", str(out_dir), str(out_dir)]
    _private(env)
    return args + [*_SEAL, "--chdir", str(workspace), "--", *cmd]
