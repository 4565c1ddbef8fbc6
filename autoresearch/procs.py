"""Child processes the harness owns: each in its own process group, stopped as a group, never orphaned.

Every child gets `AUTORESEARCH_OWNER=<workspace>` in its environment and, on Linux, a parent-death signal,
so a harness killed with SIGKILL leaves nothing running: the direct child dies with it, and the next run
finds and kills the rest of the group (and anything else carrying the marker) before it starts.

What a child used is measured from outside, never read from its output: the kernel's peak resident memory
of the child (rusage), and `TreeMemory`, which the parent samples while it polls: resident memory summed
over the whole process tree (/proc) and, where `nvidia-smi` exists, the GPU memory of the tree's processes.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

OWNER_ENV = "AUTORESEARCH_OWNER"
GRACE_SECONDS = 5.0
PAGE_MB = (os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096) / 2**20


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def spawn(cmd: list[str], cwd: Path, env: dict, log_path: Path | None) -> subprocess.Popen:
    """Start `cmd` in a new session (its own process group), output to `log_path` (or captured)."""
    out = open(log_path, "ab") if log_path is not None else subprocess.PIPE
    try:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)
    finally:
        if log_path is not None:
            out.close()


@dataclass
class Exit:
    returncode: int
    max_rss_mb: float      # peak resident memory of the child, measured by the kernel
    stopped_by: str = ""   # "" when it ended by itself, else why the harness stopped it


def poll(proc: subprocess.Popen) -> Exit | None:
    """Reap the child if it has exited, with its resource usage; None while it runs."""
    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
    if pid == 0:
        return None
    proc.returncode = os.waitstatus_to_exitcode(status)
    rss_kb = usage.ru_maxrss / (1024 if sys.platform == "darwin" else 1)
    return Exit(proc.returncode, rss_kb / 1024)


# ---------------------------------------------------------------------------
# Memory of a process tree, seen from outside

def _proc_table() -> dict[int, tuple[int, int, int]]:
    """pid -> (parent pid, process group, resident pages) of every process in /proc (Linux; {} elsewhere)."""
    table = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return table
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        table[int(name)] = (int(fields[1]), int(fields[2]), int(fields[21]))
    return table


def tree_pids(root: int, table: dict[int, tuple[int, int, int]]) -> set[int]:
    """`root`, its descendants, and every process still in its process group (a grandchild whose parent
    exited is re-parented away from the tree, but stays in the group unless it made its own session)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root] + [pid for pid, (_, pgrp, _) in table.items() if pgrp == root]
    while todo:
        pid = todo.pop()
        if pid in found or pid not in table:
            continue
        found.add(pid)
        todo += children.get(pid, [])
    return found


def gpu_memory_mb(pids: set[int], nvidia_smi: str) -> float | None:
    """MiB of GPU memory that `nvidia-smi` reports for `pids` (summed), or None when it cannot tell."""
    try:
        out = subprocess.run([nvidia_smi, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    total = 0.0
    for line in out.splitlines():
        pid, _, used = line.partition(",")
        try:
            if int(pid) in pids:
                total += float(used)
        except ValueError:
            continue  # "[N/A]", a header, a blank line
    return total


@dataclass
class TreeMemory:
    """Peak memory of a process tree, sampled by the parent while it polls: resident memory summed over the
    tree's processes (shared pages counted once per process), and the GPU memory `nvidia-smi` reports for
    them when it exists (sampled less often: it is a process to start). Nothing the tree prints is read."""
    root: int
    every: float = 0.5
    gpu_every: float = 2.0
    nvidia_smi: str | None = field(default_factory=lambda: shutil.which("nvidia-smi"))
    rss_mb: float = 0.0
    gpu_mb: float = 0.0
    _next: float = 0.0
    _next_gpu: float = 0.0

    def sample(self, now: float | None = None) -> None:
        """Take a sample if one is due."""
        now = time.monotonic() if now is None else now
        if now < self._next:
            return
        self._next = now + self.every
        table = _proc_table()
        pids = tree_pids(self.root, table)
        self.rss_mb = max(self.rss_mb, sum(table[p][2] for p in pids) * PAGE_MB)
        if self.nvidia_smi and now >= self._next_gpu and pids:
            self._next_gpu = now + self.gpu_every
            if (gpu := gpu_memory_mb(pids, self.nvidia_smi)) is not None:
                self.gpu_mb = max(self.gpu_mb, gpu)

    def peak_mb(self, exit_rss_mb: float = 0.0) -> float:
        """GPU memory when the tree used a GPU (what the original's memory_gb measures), else resident memory:
        the larger of the sampled tree and the kernel's peak for the child (`exit_rss_mb`, from rusage)."""
        return self.gpu_mb if self.gpu_mb > 0 else max(self.rss_mb, exit_rss_mb)


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def stop(proc: subprocess.Popen, why: str, grace: float = GRACE_SECONDS) -> Exit:
    """Interrupt the whole group, wait `grace` seconds, then kill it; reap the child."""
    kill_group(proc.pid, signal.SIGINT)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if (done := poll(proc)) is not None:
            kill_group(proc.pid)
            done.stopped_by = why
            return done
        time.sleep(0.05)
    kill_group(proc.pid)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Exit(proc.returncode, usage.ru_maxrss / 1024, stopped_by=why)


def owned_pids(owner: Path) -> list[int]:
    """Processes (other than this one) whose environment names `owner` as their workspace (Linux)."""
    marker = f"{OWNER_ENV}={owner}".encode()
    found = []
    proc_dir = Path("/proc")
    if not proc_dir.is_dir():
        return found
    for entry in proc_dir.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def kill_owned(owner: Path, pgids: list[int] = ()) -> int:
    """Kill leftovers of an earlier run: the recorded process groups and every marked process."""
    killed = 0
    for pgid in pgids:
        if group_alive(pgid):
            killed += kill_group(pgid)
    for pid in owned_pids(owner):
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except ProcessLookupError:
            pass
    return killed
