"""Tamper detection around a training run: what train.py must not touch, checked before and after.

The sandbox prevents these writes where it runs; the tripwire catches them everywhere (and is cheap, so it
always runs). Before training it records, for every protected file, its identity (inode, size, mtime,
ctime: ctime cannot be set back by a process) and, for small files, the bytes. After training any
difference marks the run `invalid`, and the harness puts the protected files back:

  workspace   every file except runs/, report/ and git's object store (the ledger, results.tsv, the
              settings, the journal, .git/config, hooks and refs included): restored from the bytes,
              the tampered copy kept under the run folder
  harness     the installed harness package: restored the same way
  data        the prepared splits and raw downloads (too big to copy): a tampered prepared folder is
              moved aside so the next run asks for `autoresearch prepare`
  python      site-packages entries that run code at interpreter start (*.pth, sitecustomize)
"""

from __future__ import annotations

import os
import site
import time
from dataclasses import dataclass, field
from pathlib import Path

from .harness.paths import prepared_dir, raw_dir

KEEP_BYTES = 2**20              # files up to this size are restorable...
STATE_KEEP_BYTES = 64 * 2**20   # ...and the harness's own state (the ledger) up to this
_WORKSPACE_SKIP = ("runs", "report", ".git/objects", ".git/logs", ".git/lfs")
_WORKSPACE_SKIP_FILES = (".git/index",)  # a plain `git status` meanwhile may refresh it
_STARTUP_NAMES = ("sitecustomize.py", "usercustomize.py")


def _signature(st: os.stat_result) -> tuple:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass
class Snapshot:
    files: dict[Path, tuple] = field(default_factory=dict)      # path -> signature
    content: dict[Path, bytes] = field(default_factory=dict)    # restorable bytes
    kinds: dict[Path, str] = field(default_factory=dict)        # path -> workspace|harness|data|python

    def add(self, path: Path, kind: str, keep: bool, limit: int = KEEP_BYTES) -> None:
        try:
            st = path.stat()
        except OSError:
            return
        self.files[path] = _signature(st)
        self.kinds[path] = kind
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


def _harness_dir() -> Path:
    from . import harness

    return Path(harness.__file__).parent


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


def take(scope: Scope) -> Snapshot:
    snap = Snapshot()
    skip = {scope.workspace / name for name in _WORKSPACE_SKIP_FILES}
    for path in _walk(scope.workspace, _WORKSPACE_SKIP):
        if path not in scope.ignore and path not in skip:
            state = path.parent.name == ".autoresearch"
            snap.add(path, "workspace", keep=True, limit=STATE_KEEP_BYTES if state else KEEP_BYTES)
    for path in _walk(_harness_dir()):
        snap.add(path, "harness", keep=path.suffix == ".py")
    for folder in (prepared_dir(scope.profile_name), raw_dir(scope.dataset)):
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


def changes(before: Snapshot, scope: Scope) -> list[str]:
    """Protected paths modified, added or removed since `before` ("modified: results.tsv", ...)."""
    return [f"{what}: {_show(path, scope.workspace)}" for path, what in _diff(before, take(scope))]


def restore(before: Snapshot, scope: Scope, evidence: Path) -> list[str]:
    """Put protected files back as they were; what the candidate wrote is kept under `evidence`."""
    after = take(scope)
    notes, data_touched = [], False
    for path, _ in _diff(before, after):
        if (before.kinds.get(path) or after.kinds.get(path)) == "data":
            data_touched = True
            continue
        if path.exists():
            # kept as evidence, under a name that is neither code nor a file the harness reads
            aside = evidence / "tampered" / (_show(path, scope.workspace).lstrip("/") + ".tampered")
            aside.parent.mkdir(parents=True, exist_ok=True)
            path.replace(aside)
        if path in before.content:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".restore")
            tmp.write_bytes(before.content[path])
            tmp.replace(path)
            notes.append(f"restored {_show(path, scope.workspace)}")
        else:
            notes.append(f"removed {_show(path, scope.workspace)}")
    data = prepared_dir(scope.profile_name)
    if data_touched and data.exists():
        aside = data.with_name(f"{data.name}.tampered-{int(time.time())}")
        data.replace(aside)
        notes.append(f"moved the tampered prepared data to {aside}: run `autoresearch prepare` again")
    return notes
