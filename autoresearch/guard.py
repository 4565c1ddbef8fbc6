"""Everything checked before anything trains, and the session every training command works in.

    with session(root, sandbox_mode) as s:    # settings, sandbox, lock, recovery, frozen checks, branch
        ...s.settings, s.ledger, s.sandbox, s.branch

`autoresearch run`, `noise` and `loop` open one session each (the loop keeps its own for all its
experiments) and hand it down, so the ledger is opened and the branch looked up once. The scope guard
(`out_of_scope`) and the hidden-code scan decide what an experiment may have changed; `check_branch`
makes sure nothing (an agent's own git commands, say) moved the workspace off its branch meanwhile.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import __version__, layout, sandbox
from .git import current_branch, git
from .harness.prepare import load_manifest
from .harness.settings import METRIC_VERSION, METRIC_VERSIONS, Settings, harness_fingerprint
from .ledger import Ledger
from .recovery import WorkspaceLock, recover
from .workspace import WorkspaceError, data_pins


@dataclass
class Session:
    """What a training command holds while it works: the lock is held for as long as the session is."""
    settings: Settings
    ledger: Ledger
    sandbox: str      # "bwrap" or "none"
    branch: str

    @property
    def root(self) -> Path:
        return self.settings.root

    @property
    def profile(self):
        return self.settings.profile


# ---------------------------------------------------------------------------
# The frozen inputs and the branch

def check_frozen(settings: Settings) -> dict:
    """The workspace's frozen inputs must match the installed harness and the cache; else a clear error."""
    if settings.harness_fingerprint != harness_fingerprint():
        if settings.harness_version == __version__:
            raise WorkspaceError(
                f"the installed autoresearch {__version__} differs from the one this workspace was created with "
                "(same version, other files: an edited installation); results would not be comparable: "
                "reinstall it or init a new workspace")
        if settings.metric_version not in METRIC_VERSIONS:
            raise WorkspaceError(
                f"this workspace scores with metric {settings.metric_version}, which autoresearch {__version__} "
                f"does not know (it knows {', '.join(map(str, METRIC_VERSIONS))}): install a newer version")
    if not settings.data:
        raise WorkspaceError("data not prepared for this workspace: run `autoresearch prepare` first")
    manifest = load_manifest(settings.profile)
    if manifest is None:
        raise WorkspaceError(f"no prepared data for profile {settings.profile.name!r} in the cache: "
                             "run `autoresearch prepare` first")
    if data_pins(manifest) != settings.data:
        raise WorkspaceError("the cached data or tokenizer differ from the ones pinned in autoresearch.toml; "
                             "restore the original cache (AUTORESEARCH_CACHE) or init a new workspace")
    return manifest


def metric_note(settings: Settings) -> str | None:
    """A line for workspaces whose numbers are not comparable with those of a new workspace."""
    if settings.metric_version == METRIC_VERSION:
        return None
    return (f"note: this workspace (made by autoresearch {settings.harness_version or '< 0.2'}) scores with "
            f"metric {settings.metric_version}, kept so its own numbers stay comparable; they are NOT comparable "
            f"with workspaces made now (metric {METRIC_VERSION}: every source sampled in proportion). "
            "Init a new workspace to use it.")


def workspace_branch(root: Path) -> str:
    """The branch the workspace is on, which must be an autoresearch/<tag> branch."""
    branch = current_branch(root)
    if branch is None:
        raise WorkspaceError(f"{root} is on a detached HEAD; check out the workspace branch (autoresearch/<tag>)")
    if not branch.startswith(layout.BRANCH_PREFIX):
        raise WorkspaceError(f"{root} is on branch {branch!r}, not an autoresearch/<tag> branch; "
                             "check out the workspace branch or start one with `autoresearch init . --tag NAME`")
    return branch


def check_branch(s: Session) -> None:
    """The workspace is still on the session's branch (one git call before each experiment)."""
    if (now := current_branch(s.root)) != s.branch:
        raise WorkspaceError(f"the workspace moved from {s.branch} to {now or 'a detached HEAD'} during the "
                             f"session; check out {s.branch} again (nothing was run)")


# ---------------------------------------------------------------------------
# What an experiment may have changed

def hidden_code(root: Path) -> list[str]:
    """Code files and links in the harness's own ignored folders, where `git status` does not look. The
    walk follows no link: a link is refused itself (it could lead the guard away from what it points at)."""
    found = []
    for folder in layout.HIDING_PLACES:
        for dirpath, dirnames, filenames in os.walk(root / folder):  # os.walk does not follow links
            here = Path(dirpath)
            for name in dirnames + filenames:
                path = here / name
                if path.is_symlink() or (name in filenames and path.suffix in layout.CODE_SUFFIXES):
                    found.append(str(path.relative_to(root)))
    quarantine = f"{layout.STATE}/{layout.QUARANTINE}"
    return [p for p in found if not p.startswith(quarantine)]


def out_of_scope(root: Path, frontier: str) -> list[str]:
    """Paths that differ from the frontier (committed, staged, modified or new), other than train.py,
    and code or links hidden where git does not look (the harness's own ignored folders)."""
    changed = git(root, "diff", "--name-only", frontier).splitlines()
    untracked = git(root, "ls-files", "--others", "--exclude-standard").splitlines()
    return sorted({p for p in changed + untracked + hidden_code(root) if p and p != layout.CANDIDATE})


# ---------------------------------------------------------------------------
# The session

def _say(message: str) -> None:
    print(message, file=sys.stderr)


@contextmanager
def session(root: Path, sandbox_mode: str | None):
    """Settings, sandbox, the lock, recovery, the frozen checks, the branch: what every command that trains
    does first. Yields a Session; the lock is held and the ledger open until the block ends."""
    settings = Settings.load(root)
    box = sandbox.resolve(sandbox_mode)
    with WorkspaceLock(settings.root):
        ledger = Ledger(settings.root)
        try:
            for message in recover(settings.root, ledger):
                _say(f"recover: {message}")
            check_frozen(settings)
            branch = workspace_branch(settings.root)
            if note := metric_note(settings):
                _say(note)
            if box == "none":
                _say(f"warning: train.py runs WITHOUT the sandbox ({sandbox.unenforced_reason(sandbox_mode)}); "
                     "results are recorded as unenforced: tampering is detected after the fact, not prevented "
                     "(`--sandbox require` refuses to run bare)")
            yield Session(settings, ledger, box, branch)
        finally:
            ledger.close()
