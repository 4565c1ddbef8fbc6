"""Thin git plumbing: every call is a subprocess with its output captured and its failure explained."""

from __future__ import annotations

import subprocess
from pathlib import Path


class GitError(RuntimeError):
    pass


def git(root: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise GitError(f"git {' '.join(args)} failed in {root}: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout.strip()


def show_file(root: Path, commit: str, path: str) -> bytes:
    """A file's bytes as committed (exactly: no decoding, no stripping)."""
    proc = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=root, capture_output=True)
    if proc.returncode != 0:
        raise GitError(f"git show {commit[:7]}:{path} failed in {root}: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def is_repo(root: Path) -> bool:
    return subprocess.run(["git", "rev-parse", "--git-dir"], cwd=root, capture_output=True).returncode == 0


def branch_exists(root: Path, branch: str) -> bool:
    return git(root, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", check=False) != ""


def current_branch(root: Path) -> str | None:
    """The checked-out branch, or None on a detached HEAD."""
    name = git(root, "symbolic-ref", "--quiet", "--short", "HEAD", check=False)
    return name or None


def ensure_identity(root: Path) -> None:
    """Commits need an author; give the workspace a local one if the user has none configured."""
    if not git(root, "config", "user.email", check=False):
        git(root, "config", "user.email", "autoresearch@localhost")
    if not git(root, "config", "user.name", check=False):
        git(root, "config", "user.name", "autoresearch")
