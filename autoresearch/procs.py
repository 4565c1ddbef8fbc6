"""Child processes the harness owns: each in its own process group, stopped as a group, never orphaned.

Every child gets `AUTORESEARCH_OWNER=<workspace>` in its environment and, on Linux, a parent-death signal,
so a harness killed with SIGKILL leaves nothing running: the direct child dies with it, and the next run
finds and kills the rest of the group (and anything else carrying the marker) before it starts.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

OWNER_ENV = "AUTORESEARCH_OWNER"
GRACE_SECONDS = 5.0


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
