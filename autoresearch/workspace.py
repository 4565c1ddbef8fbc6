"""Workspaces: `autoresearch init` creates one; later commands find and check it.

A workspace is a git repository on a branch `autoresearch/<tag>` holding the agent's `train.py`, the
human's `program.md`, the frozen `autoresearch.toml` and a `.gitignore` for what is never committed
(results, run logs). train.py starts from the template with the profile's hyperparameter defaults.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path

from . import __version__, layout
from . import task as tasks
from .git import branch_exists, current_branch, ensure_identity, git, is_repo
from .harness.profiles import Profile, get_profile
from .harness.settings import SETTINGS_FILE, Settings, harness_fingerprint

GITIGNORE = f"""\
# written by autoresearch: results and logs stay out of the experiment history
{layout.RESULTS_TSV}
{layout.RUNS}/
*.log
__pycache__/
{layout.STATE}/
{layout.REPORT}/
"""

# Hyperparameter defaults of train.py per profile (the template's own values are the h100 ones).
TRAIN_DEFAULTS: dict[str, dict[str, str]] = {
    "h100": {},
    "small": {"DEPTH": "4", "ASPECT_RATIO": "64", "HEAD_DIM": "128", "WINDOW_PATTERN": '"L"',
              "TOTAL_BATCH_SIZE": "2**15", "DEVICE_BATCH_SIZE": "64"},
    "cpu": {"DEPTH": "2", "ASPECT_RATIO": "64", "HEAD_DIM": "64", "WINDOW_PATTERN": '"L"',
            "TOTAL_BATCH_SIZE": "2**12", "DEVICE_BATCH_SIZE": "16"},
}


class WorkspaceError(RuntimeError):
    pass


def default_tag(today: _dt.date | None = None) -> str:
    today = today or _dt.date.today()
    return today.strftime("%b").lower() + str(today.day)


def render_train_py(profile: Profile) -> str:
    """The template train.py with the profile's defaults written into its constants block."""
    text = resources.files("autoresearch.template").joinpath(layout.CANDIDATE).read_text()
    for name, value in TRAIN_DEFAULTS.get(profile.name, {}).items():
        match = re.search(rf"^{name} = [^#\n]*(#.*)?$", text, re.M)
        if match is None:
            raise WorkspaceError(f"template train.py has no constant {name}")
        line = f"{name} = {value}"
        if match.group(1):  # keep the comment in its column
            line = line.ljust(match.start(1) - match.start() - 1) + " " + match.group(1)
        text = text[: match.start()] + line + text[match.end():]
    return text


def render_program_md(profile: Profile, tag: str) -> str:
    text = resources.files("autoresearch.template").joinpath(layout.PROGRAM_MD).read_text()
    return (text.replace("{tag}", tag).replace("{profile}", profile.name)
            .replace("{budget}", f"{profile.time_budget:g}").replace("{timeout}", f"{profile.hard_timeout:g}"))


def init_workspace(directory: Path, profile_name: str, budget: float | None = None, tag: str | None = None) -> Settings:
    """Create a workspace (or a new run branch in an existing one) and return its settings."""
    profile = get_profile(profile_name)
    if budget is not None:
        profile = profile.with_budget(budget)
    tag = tag or default_tag()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", tag):
        raise WorkspaceError(f"invalid tag {tag!r}: use letters, digits, '.', '_' or '-'")
    branch = layout.branch_of(tag)
    directory = directory.expanduser().resolve()

    if (directory / SETTINGS_FILE).exists() and is_repo(directory):
        return _new_branch(directory, profile, budget, branch)
    if directory.exists() and any(directory.iterdir()):
        raise WorkspaceError(f"{directory} is not empty and is not an autoresearch workspace; "
                             "choose an empty or new directory (nothing was changed)")

    directory.mkdir(parents=True, exist_ok=True)
    git(directory, "init", "--quiet")
    git(directory, "checkout", "--quiet", "-b", branch)
    ensure_identity(directory)
    settings = Settings(root=directory, profile=profile, harness_version=__version__,
                        harness_fingerprint=harness_fingerprint())
    settings.save()
    (directory / layout.CANDIDATE).write_text(render_train_py(profile))
    (directory / layout.PROGRAM_MD).write_text(render_program_md(profile, tag))
    (directory / ".gitignore").write_text(GITIGNORE)
    git(directory, "add", layout.CANDIDATE, layout.PROGRAM_MD, SETTINGS_FILE, ".gitignore")
    git(directory, "commit", "--quiet", "-m", f"autoresearch init: profile {profile.name}, budget {profile.time_budget:g}s")
    return settings


def init_task_workspace(directory: Path, source: Path, tag: str | None = None) -> Settings:
    """Create a workspace from a task folder (a built-in one or a user's): its files are copied and committed,
    its task.toml checked first (a bad one changes nothing)."""
    task = tasks.load(source)
    tag = tag or default_tag()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", tag):
        raise WorkspaceError(f"invalid tag {tag!r}: use letters, digits, '.', '_' or '-'")
    directory = directory.expanduser().resolve()
    if (directory / SETTINGS_FILE).exists() and is_repo(directory):
        settings = Settings.load(directory)
        if settings.task.get("name") != task.name:
            raise WorkspaceError(f"{directory} is a workspace of task {settings.task.get('name') or 'gpt'!r}; "
                                 f"init a new directory for the task {task.name!r}")
        return _branch_only(directory, settings, layout.branch_of(tag))
    if directory.exists() and any(directory.iterdir()):
        raise WorkspaceError(f"{directory} is not empty and is not an autoresearch workspace; "
                             "choose an empty or new directory (nothing was changed)")
    reserved = {SETTINGS_FILE, ".gitignore", layout.RESULTS_TSV}
    if clash := sorted(f for f in task.files if f in reserved or f.split("/")[0] in layout.HIDING_PLACES):
        raise WorkspaceError(f"the task folder holds names the harness uses itself: {', '.join(clash)}")
    directory.mkdir(parents=True, exist_ok=True)
    for name in task.files:
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes((task.folder / name).read_bytes())
    if not (directory / layout.PROGRAM_MD).exists():
        (directory / layout.PROGRAM_MD).write_text(
            f"# {task.name}\n\n{task.description}\n\nChange only {', '.join(task.editable)}; the metric is "
            f"{task.metric} ({task.better} is better). Loop: edit, then `autoresearch run -m \"what you tried\"`.\n")
    (directory / ".gitignore").write_text(GITIGNORE)
    git(directory, "init", "--quiet")
    git(directory, "checkout", "--quiet", "-b", layout.branch_of(tag))
    ensure_identity(directory)
    settings = Settings(root=directory, profile=None, harness_version=__version__,
                        harness_fingerprint=harness_fingerprint(),
                        task={"name": task.name, "metric": task.metric, "direction": task.direction})
    settings.save()
    git(directory, "add", "--all")
    git(directory, "commit", "--quiet", "-m", f"autoresearch init: task {task.name}")
    return settings


def _branch_only(directory: Path, settings: Settings, branch: str) -> Settings:
    if branch_exists(directory, branch):
        raise WorkspaceError(f"branch {branch} already exists in {directory}; pick another --tag")
    if git(directory, "status", "--porcelain"):
        raise WorkspaceError(f"{directory} has uncommitted changes; commit or stash them before a new run tag")
    git(directory, "checkout", "--quiet", "-b", branch)
    return settings


def data_fingerprint(folder: Path) -> str:
    """sha256 over every file (name and bytes) of a task's prepared data."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def prepare_task(settings: Settings, force: bool = False) -> tuple[Path, bool]:
    """Run the task's prepare step into the cache (once), then pin the data's fingerprint in
    autoresearch.toml on the first prepare (committed); a later mismatch is refused. (folder, pinned now)."""
    task = tasks.of(settings.root)
    folder = task.data_dir()
    if force or not folder.is_dir():
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "public").mkdir(parents=True)
        (tmp / "hidden").mkdir()
        if task.prepare:
            env = {**os.environ, tasks.DATA_ENV: str(tmp)}
            done = subprocess.run(list(task.prepare), cwd=settings.root, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                shutil.rmtree(tmp, ignore_errors=True)
                tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-5:])
                raise WorkspaceError(f"the task's prepare step failed (exit {done.returncode}): {tail}")
        shutil.rmtree(folder, ignore_errors=True)
        tmp.replace(folder)
    pin = data_fingerprint(folder)
    if settings.task.get("data_fingerprint"):
        if settings.task["data_fingerprint"] != pin:
            raise WorkspaceError(f"the prepared data in {folder} differ from the ones this workspace was pinned to; "
                                 "run `autoresearch prepare --force` to rebuild them, or init a new workspace")
        return folder, False
    settings.task["data_fingerprint"] = pin
    settings.save()
    git(settings.root, "add", SETTINGS_FILE)
    git(settings.root, "commit", "--quiet", "-m", "autoresearch prepare: pin the task's data fingerprint", "--",
        SETTINGS_FILE)
    return folder, True


def _new_branch(directory: Path, profile: Profile, budget: float | None, branch: str) -> Settings:
    settings = Settings.load(directory)
    if settings.profile is None:
        raise WorkspaceError(f"{directory} is a workspace of the task {settings.task.get('name')!r}, not of the GPT "
                             "task: use `autoresearch init DIR --task NAME` for a new run tag")
    if settings.profile.name != profile.name:
        raise WorkspaceError(f"{directory} is a workspace of profile {settings.profile.name!r}; a profile is frozen "
                             f"per workspace: init a new directory for {profile.name!r}")
    if budget is not None and budget != settings.profile.time_budget:
        raise WorkspaceError("--budget is frozen per workspace; init a new directory for another budget")
    if branch_exists(directory, branch):
        raise WorkspaceError(f"branch {branch} already exists in {directory}; pick another --tag")
    if git(directory, "status", "--porcelain"):
        raise WorkspaceError(f"{directory} has uncommitted changes; commit or stash them before a new run tag")
    git(directory, "checkout", "--quiet", "-b", branch)
    return settings


def open_workspace(start: Path | None = None) -> Settings:
    from .harness.settings import find_workspace

    root = find_workspace(start)
    if not is_repo(root):
        raise WorkspaceError(f"{root} has {SETTINGS_FILE} but is not a git repository")
    return Settings.load(root)


def data_pins(manifest: dict) -> dict:
    """The fingerprints of prepared data that a workspace pins (autoresearch.toml's [data])."""
    return {"data_fingerprint": manifest["data_fingerprint"], "tokenizer_fingerprint": manifest["tokenizer_fingerprint"]}


def pin_data(settings: Settings, manifest: dict) -> bool:
    """Record the data and tokenizer fingerprints on first prepare; refuse a later mismatch."""
    pinned = data_pins(manifest)
    if settings.data:
        if settings.data != pinned:
            raise WorkspaceError(
                "the prepared data or tokenizer differ from the ones this workspace was pinned to "
                f"(workspace {settings.data}, cache {pinned}); results would not be comparable. "
                "Restore the original cache (AUTORESEARCH_CACHE) or init a new workspace")
        return False
    settings.data = pinned
    settings.save()
    root = settings.root
    git(root, "add", SETTINGS_FILE)
    git(root, "commit", "--quiet", "-m", "autoresearch prepare: pin data and tokenizer fingerprints", "--", SETTINGS_FILE)
    return True


__all__ = ["init_workspace", "init_task_workspace", "prepare_task", "open_workspace", "pin_data", "data_pins", "render_train_py", "WorkspaceError", "current_branch"]
