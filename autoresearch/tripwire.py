"""Tamper detection around a training run: what train.py must not touch, checked before and after.

The sandbox prevents these writes where it runs; the tripwire catches them everywhere (and is cheap, so it
always runs). Before training it records, for every protected file, its identity (inode, size, mtime,
ctime: ctime cannot be set back by a process) and, for small files, the bytes. After training any
difference marks the run `invalid`, and the harness puts the protected files back (a plain file found with
its own bytes, mode and owner is left as it is: see `_intact`):

  workspace   every file except runs/, report/ and git's object store (the ledger, results.tsv, the
              settings, the journal, .git/config, hooks and refs included): restored from the bytes,
              the tampered copy kept under the run folder
  harness     the whole installed `autoresearch` package (the parent that decides, not only
              harness/): restored the same way
  data        the prepared splits and raw downloads (too big to copy): a tampered prepared folder is
              moved aside so the next run asks for `autoresearch prepare`
  python      site-packages entries that run code at interpreter start (*.pth, sitecustomize)

The ledger is the one file the parent keeps open (SQLite, in WAL mode) while train.py runs, so it is
never opened by the tripwire: on POSIX, closing ANY descriptor of a file drops every lock the process
holds on it, SQLite's included, after which the next connection to close (the loop's, or a user's
`autoresearch status` in another terminal) would believe it was the last and delete the write-ahead
log. Its content is compared and restored through the open connection (`Ledger.snapshot()`), its file
by `stat` alone; the write-ahead log and the shared-memory index are SQLite's working files, not state.
"""

from __future__ import annotations

import os
import site
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import layout
from .harness.paths import prepared_dir, raw_dir

KEEP_BYTES = 2**20              # files up to this size are restorable...
STATE_KEEP_BYTES = 64 * 2**20   # ...and the harness's own state (the ledger) up to this
_WORKSPACE_SKIP = (layout.RUNS, layout.REPORT, ".git/objects", ".git/logs", ".git/lfs")
_WORKSPACE_SKIP_FILES = (".git/index",)  # a plain `git status` meanwhile may refresh it
_STARTUP_NAMES = ("sitecustomize.py", "usercustomize.py")


def _signature(st: os.stat_result) -> tuple:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _owner(st: os.stat_result) -> tuple:
    return (st.st_mode, st.st_uid, st.st_gid)


@dataclass
class Snapshot:
    files: dict[Path, tuple] = field(default_factory=dict)      # path -> signature
    content: dict[Path, bytes] = field(default_factory=dict)    # restorable bytes
    kinds: dict[Path, str] = field(default_factory=dict)        # path -> workspace|harness|data|python
    owners: dict[Path, tuple] = field(default_factory=dict)     # path -> (mode, uid, gid)
    ledger: bytes | None = None                                  # the ledger's image, read through its connection

    def add(self, path: Path, kind: str, keep: bool, limit: int = KEEP_BYTES) -> None:
        try:
            st = path.stat()
        except OSError:
            return
        self.files[path] = _signature(st)
        self.kinds[path] = kind
        self.owners[path] = _owner(st)
        if keep and st.st_size <= limit:
            try:
                self.content[path] = path.read_bytes()
            except OSError:
                pass


def _walk(root: Path, skip: tuple[str, ...] = ()) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root).as_posix()
        dirnames[:] = [d for d in dirnames if (f"{rel}/{d}" if rel != "." else d) not in skip
                       and d != "__pycache__"]
        found.extend(Path(dirpath) / name for name in filenames)
    return found


def _package_dir() -> Path:
    from .harness.settings import PACKAGE_DIR

    return PACKAGE_DIR


def _site_dirs() -> list[Path]:
    dirs = list(site.getsitepackages()) + [site.getusersitepackages()]
    return [Path(d) for d in dirs if Path(d).is_dir()]


@dataclass(frozen=True)
class Scope:
    """What is protected around one run."""
    workspace: Path
    profile_name: str
    dataset: str
    ignore: tuple[Path, ...] = ()   # files the harness itself writes meanwhile (the journal)
    ledger: object = None           # the open Ledger: its content is read through its connection
    data: tuple[Path, ...] = ()     # a task's prepared data (instead of the profile's prepared and raw folders)

    @property
    def data_dirs(self) -> tuple[Path, ...]:
        return self.data or (prepared_dir(self.profile_name), raw_dir(self.dataset))


def _ledger_files(scope: Scope) -> tuple[Path, ...]:
    return scope.ledger.files if scope.ledger is not None else ()


def take(scope: Scope) -> Snapshot:
    snap = Snapshot()
    skip = {scope.workspace / name for name in _WORKSPACE_SKIP_FILES} | set(scope.ignore)
    ledger_files = _ledger_files(scope)
    skip |= set(ledger_files[1:])  # SQLite's working files; the content is checked through the connection
    for path in _walk(scope.workspace, _WORKSPACE_SKIP):
        if path in skip:
            continue
        if path in ledger_files:  # stat only: opening it would drop SQLite's locks (module docstring)
            snap.add(path, "workspace", keep=False)
            continue
        state = path.parent.name == layout.STATE
        snap.add(path, "workspace", keep=True, limit=STATE_KEEP_BYTES if state else KEEP_BYTES)
    if scope.ledger is not None:
        snap.ledger = scope.ledger.snapshot()
    for path in _walk(_package_dir()):
        snap.add(path, "harness", keep=True)
    for folder in scope.data_dirs:
        if folder.is_dir():
            for path in _walk(folder):
                snap.add(path, "data", keep=False)
    for folder in _site_dirs():
        for path in folder.iterdir():
            if path.suffix == ".pth" or path.name in _STARTUP_NAMES:
                snap.add(path, "python", keep=True)
    return snap


def _diff(before: Snapshot, after: Snapshot) -> list[tuple[Path, str]]:
    out = []
    for path in sorted(set(before.files) | set(after.files)):
        if before.files.get(path) != after.files.get(path):
            out.append((path, "added" if path not in before.files else
                        "removed" if path not in after.files else "modified"))
    return out


def _show(path: Path, workspace: Path) -> str:
    try:
        return str(path.relative_to(workspace))
    except ValueError:
        return str(path)


def _ledger_changed(before: Snapshot, after: Snapshot, scope: Scope) -> bool:
    return scope.ledger is not None and after.ledger != before.ledger


def changes(before: Snapshot, scope: Scope) -> list[str]:
    """Protected paths modified, added or removed since `before` ("modified: results.tsv", ...)."""
    after = take(scope)
    found = [f"{what}: {_show(path, scope.workspace)}" for path, what in _diff(before, after)]
    if _ledger_changed(before, after, scope):
        found.append(f"modified: {_show(scope.ledger.path, scope.workspace)} (its content)")
    return sorted(set(found))


def restore(before: Snapshot, scope: Scope, evidence: Path) -> list[str]:
    """Put protected files back as they were; what the candidate wrote is kept under `evidence`.
    The ledger is closed meanwhile and reopened afterwards from its restored image."""
    after = take(scope)
    notes, data_touched = [], False
    ledger_files = _ledger_files(scope)
    if scope.ledger is not None:
        touched = _ledger_changed(before, after, scope) or any(p in ledger_files for p, _ in _diff(before, after))
        scope.ledger.close()
        if touched:
            notes += _restore_ledger(before.ledger, ledger_files, scope.workspace, evidence)
    for path, _ in _diff(before, after):
        if path in ledger_files:
            continue
        if (before.kinds.get(path) or after.kinds.get(path)) == "data":
            data_touched = True
            continue
        if _intact(path, before):
            notes.append(f"left {_show(path, scope.workspace)}: rewritten with its own bytes")
            continue
        if path.exists():
            _set_aside(path, scope.workspace, evidence)
        if path in before.content:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".restore")
            tmp.write_bytes(before.content[path])
            tmp.replace(path)
            notes.append(f"restored {_show(path, scope.workspace)}")
        else:
            notes.append(f"removed {_show(path, scope.workspace)}")
    data = scope.data_dirs[0]
    if data_touched and data.exists():
        aside = data.with_name(f"{data.name}.tampered-{int(time.time())}")
        data.replace(aside)
        notes.append(f"moved the tampered prepared data to {aside}: run `autoresearch prepare` again")
    if scope.ledger is not None:
        scope.ledger.reopen()
    return notes


def _intact(path: Path, before: Snapshot) -> bool:
    """`path` was written again with the bytes it had: a regular file (not a link to one), with one name, its
    mode and owner, and its content. There is nothing to put back, and rewriting it would give it a new identity that
    every other run watching the same file (a second workspace's, on the shared site-packages) would take
    for tampering and undo in turn, each undo invalidating the other's next run. The run is still invalid."""
    if path not in before.content:
        return False
    try:
        st = os.lstat(path)
        return (stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and _owner(st) == before.owners.get(path)
                and path.read_bytes() == before.content[path])
    except OSError:
        return False


def _set_aside(path: Path, workspace: Path, evidence: Path) -> None:
    """Keep what the candidate wrote as evidence, under a name that is neither code nor a file we read."""
    aside = evidence / "tampered" / (_show(path, workspace).lstrip("/") + ".tampered")
    aside.parent.mkdir(parents=True, exist_ok=True)
    path.replace(aside)


def _restore_ledger(image: bytes, files: tuple[Path, ...], workspace: Path, evidence: Path) -> list[str]:
    """The ledger back from its image; a write-ahead log the candidate left must not be replayed."""
    db = files[0]
    for path in files:
        if path.exists():
            _set_aside(path, workspace, evidence)
    tmp = db.with_name(db.name + ".restore")
    tmp.write_bytes(image)
    tmp.replace(db)
    return [f"restored {_show(db, workspace)}"]
