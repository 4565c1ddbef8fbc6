"""Thin git plumbing: every call is a subprocess with its output captured and its failure explained."""

from __future__ import annotations

import subprocess
from pathlib import Path


class GitError(RuntimeError):
    pass


def git(root: Path, *args: str, check: bool = True, input: str | None = None) -> str:
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, input=input)
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


def merge_text(base: str, ours: str, theirs: str) -> str | None:
    """A three-way merge of one file's texts (git merge-file): the merged text, or None on a conflict."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="autoresearch-merge-") as tmp:
        paths = []
        for name, text in (("ours", ours), ("base", base), ("theirs", theirs)):
            path = Path(tmp) / name
            path.write_text(text)
            paths.append(str(path))
        proc = subprocess.run(["git", "merge-file", "-p", *paths], capture_output=True, text=True)
    if proc.returncode != 0:  # >0: the number of conflicts; <0: an error
        return None
    return proc.stdout


def commit_files(root: Path, parent: str, files: dict[str, str], message: str) -> str:
    """A commit whose tree is `parent`'s with each `path` (at any depth) holding its text, made without
    touching the index, the working tree or any ref (the swarm's hub commits candidates this way): a
    throw-away index of its own is read from `parent`, updated and written as the tree."""
    import os
    import tempfile

    with tempfile.TemporaryDirectory(prefix="autoresearch-index-") as tmp:
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(tmp) / "index")}

        def run(*args: str, input: str | None = None) -> str:
            proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, input=input, env=env)
            if proc.returncode != 0:
                raise GitError(f"git {' '.join(args)} failed in {root}: {(proc.stderr or proc.stdout).strip()}")
            return proc.stdout.strip()

        run("read-tree", parent)
        for path, text in sorted(files.items()):
            blob = run("hash-object", "-w", "--stdin", input=text)
            listed = run("ls-files", "--stage", "--", path).split(" ", 1)[0]
            run("update-index", "--add", "--cacheinfo", f"{listed or '100644'},{blob},{path}")
        tree = run("write-tree")
        return run("-c", "gc.auto=0", "commit-tree", tree, "-p", parent, "-m", message or "(no description)")


def commit_file(root: Path, parent: str, path: str, text: str, message: str) -> str:
    """commit_files with one file."""
    return commit_files(root, parent, {path: text}, message)