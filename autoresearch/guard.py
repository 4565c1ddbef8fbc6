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
from . import task as tasks
from .git import current_branch, ensure_identity, git
from .harness.prepare import load_manifest
from .harness.settings import METRIC_VERSION, METRIC_VERSIONS, Settings, harness_fingerprint
from .ledger import Ledger
from .recovery import WorkspaceLock, recover
from .workspace import WorkspaceError, data_fingerprint, data_pins


@dataclass
class Session:
    """What a training command holds while it works: the lock is held for as long as the session is."""
    settings: Settings
    ledger: Ledger
    sandbox: str      # "bwrap" or "none"
    branch: str
    task: tasks.Task = tasks.GPT_TASK   # what the workspace researches (tasks.of(root))

    @property
    def root(self) -> Path:
        return self.settings.root

    @property
    def profile(self):
        return self.settings.profile

    @property
    def budget(self) -> float:
        """Seconds of the candidate's work: the profile's training budget, or the task's."""
        return self.profile.time_budget if self.task.is_gpt else self.task.budget


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
    if settings.profile is None:
        return _check_task_data(settings)
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


def _check_task_data(settings: Settings) -> dict:
    """A task workspace: its task.toml is readable and its prepared data match the pinned fingerprint."""
    task = tasks.of(settings.root)
    if task.is_gpt or settings.task.get("name") != task.name:
        raise WorkspaceError(f"{settings.root}: autoresearch.toml names the task {settings.task.get('name')!r} but "
                             f"task.toml is missing or names another; restore it from git")
    pinned, folder = settings.task.get("data_fingerprint"), task.data_dir()
    if not pinned or not folder.is_dir():
        raise WorkspaceError(f"data not prepared for the task {task.name!r}: run `autoresearch prepare` first")
    if data_fingerprint(folder) != pinned:
        raise WorkspaceError(f"the task's prepared data in {folder} differ from the ones pinned in autoresearch.toml; "
                             "run `autoresearch prepare --force`, or init a new workspace")
    return {}


def frozen_task(root: Path, ledger: Ledger, branch: str) -> tasks.Task:
    """The workspace's task, as the frontier commit has it: a task.toml edited since is refused (it decides
    what may change, so it can never be changed by what it guards)."""
    task = tasks.of(root)
    if task.is_gpt:
        return task
    frontier = ledger.frontier(branch)
    commit = frontier.commit if frontier else git(root, "rev-parse", "HEAD")
    committed = git(root, "show", f"{commit}:{tasks.TASK_FILE}", check=False)
    if committed.strip() != (root / tasks.TASK_FILE).read_text().strip():
        raise WorkspaceError(f"{tasks.TASK_FILE} differs from the frontier's ({commit[:7]}); it is frozen: "
                             f"`git checkout {commit[:7]} -- {tasks.TASK_FILE}` (nothing was run)")
    return task


def check_task_env(settings: Settings) -> None:
    """The variables a task requires (its grader's endpoint) are set: else TaskUnready, a configuration error
    found before the lock, the ledger, the agent or anything else is touched."""
    if settings.profile is None:
        tasks.of(settings.root).check_env(os.environ)


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


def out_of_scope(root: Path, frontier: str, task: tasks.Task = tasks.GPT_TASK) -> list[str]:
    """Paths that differ from the frontier (committed, staged, modified or new), other than the task's
    editable files (train.py), and code or links hidden where git does not look (the harness's own
    ignored folders). An editable file may change, never appear or vanish: the task's files are fixed."""
    changed = git(root, "diff", "--name-only", frontier).splitlines()
    untracked = git(root, "ls-files", "--others", "--exclude-standard").splitlines()
    if task.is_gpt:
        return sorted({p for p in changed + untracked + hidden_code(root) if p and p != layout.CANDIDATE})
    added_or_gone = git(root, "diff", "--name-only", "--diff-filter=ADR", frontier).splitlines()
    return sorted({p for p in changed + untracked + hidden_code(root)
                   if p and (not task.is_editable(p) or p in untracked or p in added_or_gone)})


# ---------------------------------------------------------------------------
# The session

def _say(message: str) -> None:
    print(message, file=sys.stderr)


@contextmanager
def session(root: Path, sandbox_mode: str | None):
    """The variables the task requires, settings, sandbox, the lock, recovery, the frozen checks, the branch:
    what every command that trains does first. Yields a Session; the lock is held and the ledger open until
    the block ends."""
    settings = Settings.load(root)
    box = sandbox.resolve(sandbox_mode)
    check_task_env(settings)
    with WorkspaceLock(settings.root):
        ledger = Ledger(settings.root)
        try:
            for message in recover(settings.root, ledger):
                _say(f"recover: {message}")
            check_frozen(settings)
            # every command that commits (run, loop, the swarm's hub) comes through here; init gave the workspace
            # an identity only if the user had none then, and this environment may have none now (another HOME)
            ensure_identity(settings.root)
            branch = workspace_branch(settings.root)
            if note := metric_note(settings):
                _say(note)
            if box == "none":
                _say(f"warning: train.py runs WITHOUT the sandbox ({sandbox.unenforced_reason(sandbox_mode)}); "
                     "results are recorded as unenforced: tampering is detected after the fact, not prevented "
                     "(`--sandbox require` refuses to run bare)")
            yield Session(settings, ledger, box, branch, frozen_task(settings.root, ledger, branch))
        finally:
            ledger.close()
