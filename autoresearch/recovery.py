"""Crash safety for `autoresearch run`: the workspace lock, the journal, and recovery.

The journal names the experiment in flight and the last phase it reached (started, committed, training,
evaluating, recording, recorded). Whatever killed the run, `recover()` then:
  1. kills every process the dead run left (its process group, and anything marked as the workspace's);
  2. records the experiment once: a `running` row becomes `crash` with class `interrupted`;
  3. puts the tree back on the frontier: the candidate commit is kept under
     refs/autoresearch/discarded/<id>, uncommitted edits under refs/autoresearch/saved/<id>, then reset.
Recovery is idempotent: running it twice, or being killed inside it, is harmless.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from pathlib import Path

from . import layout, procs
from .git import git
from .ledger import Experiment, Ledger
from .logs import log_tail
from .workspace import WorkspaceError


class WorkspaceLock:
    """An exclusive flock on .autoresearch/lock; the kernel drops it when the holder dies."""

    def __init__(self, root: Path):
        self.path = layout.state(root, layout.LOCK)
        self.fd: int | None = None

    def __enter__(self) -> "WorkspaceLock":
        self.path.parent.mkdir(exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            self.fd = None
            raise WorkspaceError(f"another autoresearch run holds this workspace (pid {holder}); "
                                 "wait for it to finish or stop it first") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class Journal:
    def __init__(self, root: Path):
        self.path = layout.state(root, layout.JOURNAL)
        self.data: dict = {}

    def read(self) -> dict | None:
        try:
            self.data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:
            self.data = {}
        return self.data

    def write(self, **data) -> None:
        self.data = data
        tmp = self.path.with_name(layout.JOURNAL + ".tmp")
        with open(tmp, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)

    def update(self, **changes) -> None:
        self.write(**{**self.data, **changes})

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
        self.data = {}


def preserve(root: Path, exp: Experiment) -> None:
    """Keep the candidate commit and any uncommitted edits reachable before the tree is reset."""
    if exp.commit:
        git(root, "update-ref", layout.discarded_ref(exp.id), exp.commit)
    if git(root, "status", "--porcelain", "--untracked-files=no"):
        stash = git(root, "stash", "create", f"autoresearch: edits present when experiment {exp.id} was reset")
        if stash:
            git(root, "update-ref", layout.saved_ref(exp.id), stash)


def park(root: Path, frontier_train_py: bytes) -> None:
    """Set the candidate train.py aside and put the frontier's in its place (while the noise floor is
    measured); `unpark` puts the candidate back, here or in the recovery after a kill."""
    candidate = Path(root) / layout.CANDIDATE
    layout.state(root, layout.PARKED).write_bytes(candidate.read_bytes())
    candidate.write_bytes(frontier_train_py)


def park_files(root: Path, frontier_files: dict[str, bytes]) -> None:
    """`park` for a task's editable files: each candidate file is set aside under .autoresearch/parked/
    (as NAME.parked: not code where the guard looks) and the frontier's put in its place."""
    folder = layout.state(root, layout.PARKED_TASK)
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in frontier_files.items():
        path = Path(root) / name
        aside = folder / (name + ".parked")
        aside.parent.mkdir(parents=True, exist_ok=True)
        aside.write_bytes(path.read_bytes())
        path.write_bytes(data)


def _unpark_files(root: Path) -> str | None:
    folder = layout.state(root, layout.PARKED_TASK)
    if not folder.is_dir():
        return None
    for aside in sorted(folder.rglob("*.parked")):
        name = aside.relative_to(folder).as_posix().removesuffix(".parked")
        (Path(root) / name).write_bytes(aside.read_bytes())
    shutil.rmtree(folder)
    return "put back the candidate's files set aside while the noise floor was measured"


def unpark(root: Path) -> str | None:
    """Put back a candidate train.py (or a task's files) parked by an interrupted noise measurement."""
    parked = layout.state(root, layout.PARKED)
    if not parked.exists():
        return _unpark_files(root)
    (Path(root) / layout.CANDIDATE).write_bytes(parked.read_bytes())
    parked.unlink()
    return "put back the candidate train.py set aside while the noise floor was measured"


def remove_worker_folders(root: Path) -> str | None:
    """The folders of a swarm that was killed (run under the workspace lock: no swarm is running), with any
    process still working in them."""
    folder = layout.state(root, layout.SWARM)
    if not folder.is_dir():
        return None
    names = sorted(p.name for p in folder.iterdir())
    for name in names:
        procs.kill_owned(layout.worker_dir(root, name))
    shutil.rmtree(folder, ignore_errors=True)
    return f"removed the folders of {len(names)} swarm worker(s) left by an interrupted swarm"


def _clear_stale_git_lock(root: Path) -> str | None:
    lock = root / ".git" / "index.lock"
    if lock.exists():
        lock.unlink()
        return "removed a stale .git/index.lock left by the interrupted run"
    return None


def recover(root: Path, ledger: Ledger, reason: str = "the harness process died") -> list[str]:
    """Bring the workspace back to a consistent state after an interrupted run (see module docstring)."""
    messages: list[str] = []
    journal = Journal(root)
    state = journal.read()
    pgids = [state["pgid"]] if state and state.get("pgid") else []
    if killed := procs.kill_owned(root, pgids):
        messages.append(f"killed {killed} leftover process(es) of the interrupted run")
    if (note := unpark(root)) is not None:
        messages.append(note)
    if (note := remove_worker_folders(root)) is not None:
        messages.append(note)
    if state is None:
        for exp in ledger.running():  # a row whose journal was never written
            _mark_interrupted(ledger, exp, reason)
            messages.append(f"experiment {exp.id} was interrupted before it started; recorded as crash")
        return messages
    if (note := _clear_stale_git_lock(root)) is not None:
        messages.append(note)

    exp = ledger.get(state.get("id", -1)) if state else None
    frontier = state.get("frontier")
    head = git(root, "rev-parse", "HEAD")
    if exp is not None:
        commit = state.get("commit") or exp.commit
        if not commit and frontier and head != frontier and head != state.get("head"):
            commit = head  # killed between `git commit` and the journal update
        if commit and not exp.commit:
            exp.commit = commit
        if exp.status == "running":
            _mark_interrupted(ledger, exp, reason)
            messages.append(f"experiment {exp.id} ({exp.short or 'uncommitted'}) was interrupted; recorded as crash")
        if exp.status != "keep" and frontier:
            if exp.commit and head != frontier:
                preserve(root, exp)
                git(root, "reset", "--quiet", "--hard", frontier)
                messages.append(f"reset the tree to the frontier {frontier[:7]} (candidate kept under "
                                f"{layout.discarded_ref(exp.id)})")
            elif not exp.commit and head != frontier:
                git(root, "reset", "--quiet", "--soft", frontier)  # uncommitted candidate: keep the edits
                messages.append(f"moved HEAD back to the frontier {frontier[:7]}; train.py edits kept")
    for other in ledger.running():
        _mark_interrupted(ledger, other, reason)
    journal.clear()
    return messages


def _mark_interrupted(ledger: Ledger, exp: Experiment, reason: str) -> None:
    exp.status, exp.error_class = "crash", "interrupted"
    exp.reason = reason
    if exp.log_path:
        exp.error_excerpt = log_tail(ledger.root / exp.log_path)
    exp.finished_at = time.time()
    ledger.update(exp)
