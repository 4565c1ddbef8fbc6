"""Shared fixtures: an isolated cache with the cpu profile prepared once, and workspaces made by init."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from autoresearch.harness.prepare import prepare
from autoresearch.harness.profiles import get_profile
from autoresearch.workspace import init_workspace, open_workspace, pin_data


# The files that take longest (minutes of training each), run first: pytest-xdist hands whole files to its two
# workers in collection order (`--no-loadscope-reorder` in pyproject.toml; by default it puts the files with
# the most tests first, and the long files, which have few, ran alone at the end of the suite).
LONG_FILES = ("test_quickstart.py", "test_recovery.py", "test_loop.py", "test_redteam.py", "test_run.py",
              "test_swarm.py", "test_redteam_clock.py", "test_redteam_evaluator.py", "test_redteam_sandbox.py",
              "test_report.py", "test_tasks.py", "test_train_e2e.py", "test_noise.py")


def _long_first(item) -> int:
    name = item.path.name
    return LONG_FILES.index(name) if name in LONG_FILES else len(LONG_FILES)


def pytest_collection_modifyitems(config, items):
    import torch

    items.sort(key=_long_first)  # stable: within a file, and among the rest, the order stays as collected

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


def _session_env(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    yield
    if old is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = old


@pytest.fixture(scope="session", autouse=True)
def no_compile_in_subprocesses():
    """Training runs in tests skip torch.compile (its warm-cache start alone costs seconds per run): the
    harness behaviour under test does not depend on it. test_train_e2e runs the compiled path for real."""
    yield from _session_env("TORCHDYNAMO_DISABLE", "1")


@pytest.fixture(scope="session", autouse=True)
def one_thread_per_worker():
    """Under pytest-xdist, every worker's training runs share the machine: one torch thread each, so two
    workers on two cores do not oversubscribe them (nothing under test depends on the thread count)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        yield from _session_env("OMP_NUM_THREADS", "1")
    else:
        yield


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """AUTORESEARCH_CACHE for the whole session, with the cpu profile prepared (embedded corpus)."""
    path = tmp_path_factory.mktemp("cache")
    old = os.environ.get("AUTORESEARCH_CACHE")
    os.environ["AUTORESEARCH_CACHE"] = str(path)
    prepare(get_profile("cpu"), progress=False)
    yield path
    if old is None:
        os.environ.pop("AUTORESEARCH_CACHE", None)
    else:
        os.environ["AUTORESEARCH_CACHE"] = old


@pytest.fixture
def workspace(cache_dir, tmp_path, monkeypatch):
    """A prepared cpu workspace with a short budget; the process's cwd is the workspace."""
    root = tmp_path / "lab"
    settings = init_workspace(root, "cpu", budget=4, tag="test")
    from autoresearch.harness.prepare import load_manifest

    pin_data(settings, load_manifest(settings.profile))
    monkeypatch.chdir(root)
    monkeypatch.setenv("AUTORESEARCH_WORKSPACE", str(root))
    return open_workspace(root)


@pytest.fixture(scope="session")
def baseline_template(cache_dir, tmp_path_factory) -> Path:
    """One cpu workspace (budget 3, tag t) for the whole suite, its baseline run and kept: see `baselined` (and
    the red team's `lab`, a copy of the same). Under pytest-xdist the first worker to need it trains it, under
    a file lock in the folder the workers share, and the others wait for it: the workspace holds no path of
    its cache, and every worker's cache holds the same prepared data."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder, root = shared / "baselined", shared / "baselined" / "lab"
    with FileLock(str(shared / "baselined.lock")):
        if not (folder / "done").exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a failed attempt left
            folder.mkdir()
            new_lab(root, budget=3)
            done = run_cli("run", "-m", "baseline", "--rule", "strict", cwd=root)
            assert done.returncode == 0 and done.stdout.startswith("keep"), done.stdout + done.stderr
            (folder / "done").touch()
    return root


@pytest.fixture
def baselined(baseline_template, tmp_path) -> Path:
    """A copy of `baseline_template` of the test's own, for tests whose subject comes after a kept baseline
    (a kill, a crash, a broken ledger): each saves a real run. A workspace holds no absolute path (git,
    ledger, settings), so a copy is a workspace like any other; test_run trains its own baselines."""
    root = tmp_path / "lab"
    shutil.copytree(baseline_template, root, symlinks=True)
    return root


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """The real console entry point in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "autoresearch.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def git(root, *args) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()


def table(root: Path, name: str) -> list[dict]:
    """Every row of one table of a workspace's ledger, as dicts, oldest first."""
    db = sqlite3.connect(root / ".autoresearch" / "ledger.sqlite")
    db.row_factory = sqlite3.Row
    out = [dict(r) for r in db.execute(f"SELECT * FROM {name} ORDER BY id")]
    db.close()
    return out


def rows(root: Path) -> list[dict]:
    """Every experiment row of a workspace's ledger, as dicts, oldest first."""
    return table(root, "experiments")


def agent_context(root: Path, history: str = ""):
    """What an agent is given in the workspace `root`: its program.md and train.py as they are now."""
    from autoresearch.agents import Context

    return Context(workspace=root, program=(root / "program.md").read_text(), train_py=(root / "train.py").read_text(),
                   history=history, budget_seconds=60.0)


def new_lab(root: Path, budget: float = 4, tag: str = "t") -> Path:
    """`autoresearch init` + `prepare` through the real CLI: a cpu workspace with a short budget."""
    done = run_cli("init", str(root), "--profile", "cpu", "--budget", f"{budget:g}", "--tag", tag, cwd=root.parent)
    assert done.returncode == 0, done.stderr
    assert run_cli("prepare", cwd=root).returncode == 0
    return root
