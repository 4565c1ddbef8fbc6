"""`autoresearch run`: real git repos, real CPU training with few-second budgets, real subprocesses."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import git, new_lab, rows, run_cli

pytestmark = pytest.mark.slow


def tsv(root: Path) -> list[list[str]]:
    lines = (root / "results.tsv").read_text().splitlines()
    assert lines[0] == "commit\tval_bpb\tmemory_gb\tstatus\tdescription"
    return [line.split("\t") for line in lines[1:]]


def edit(root: Path, old: str, new: str) -> None:
    path = root / "train.py"
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def wait_for_training(proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Block until the experiment logging to `log` is past start-up (train.py printed its vocabulary)."""
    import time

    deadline = time.monotonic() + timeout
    while not (log.exists() and "Vocab size" in log.read_text()):
        assert time.monotonic() < deadline, f"{log} never showed training"
        assert proc.poll() is None, f"the process ended early: {proc.stdout.read() if proc.stdout else ''}"
        time.sleep(0.1)


def run(root: Path, message: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_cli("run", "-m", message, "--rule", "strict", cwd=root, env=env)


@pytest.fixture
def lab(cache_dir, tmp_path):
    return new_lab(tmp_path / "lab", budget=4)


@pytest.mark.parametrize("name, change, status, error_class", [
    ("syntax", ("import gc\n", "import gc\ndef broken(:\n"), "crash", "syntax"),
    ("import", ("import gc\n", "import gc\nimport not_a_module_anywhere\n"), "crash", "import"),
    ("exception", ("t_start = time.time()\n", "t_start = time.time()\nraise RuntimeError('boom')\n"), "crash", "exception"),
    ("nan", ("EMBEDDING_LR = 0.6 ", "EMBEDDING_LR = float('nan') "), "crash", "nan"),
])
def test_failures_are_recorded_with_their_class(baselined, name, change, status, error_class):
    lab = baselined
    frontier = git(lab, "rev-parse", "HEAD")
    edit(lab, *change)
    proc = run(lab, f"break it: {name}")
    assert proc.returncode != 0
    assert proc.stdout.startswith(status) and f"[{error_class}]" in proc.stdout, proc.stdout + proc.stderr
    last = rows(lab)[-1]
    assert (last["status"], last["error_class"]) == (status, error_class)
    assert last["error_excerpt"] and last["val_bpb"] is None
    assert tsv(lab)[-1][1:4] == ["0.000000", "0.0", status]
    assert git(lab, "rev-parse", "HEAD") == frontier and git(lab, "status", "--porcelain") == ""
    assert git(lab, "rev-parse", "--verify", "refs/autoresearch/discarded/0002")


def test_edits_outside_train_py_are_rejected_and_nothing_is_touched(baselined):
    lab = baselined
    head = git(lab, "rev-parse", "HEAD")
    (lab / "program.md").write_text("my own rules\n")
    (lab / "helper.py").write_text("x = 1\n")
    edit(lab, "DEPTH = 2 ", "DEPTH = 3 ")
    proc = run(lab, "sneak in a helper")
    assert proc.returncode == 5 and proc.stdout.startswith("rejected")
    assert "helper.py" in proc.stdout and "program.md" in proc.stdout
    assert git(lab, "rev-parse", "HEAD") == head  # no commit
    assert (lab / "program.md").read_text() == "my own rules\n"
    assert (lab / "helper.py").read_text() == "x = 1\n"
    assert "DEPTH = 3 " in (lab / "train.py").read_text()
    assert not (lab / "runs" / "0002.log").exists()  # nothing ran
    assert rows(lab)[-1]["status"] == "rejected" and tsv(lab)[-1][3] == "rejected"

    # the frozen settings file is out of scope too, even committed
    (lab / "program.md").write_text(git(lab, "show", "HEAD:program.md") + "\n")
    (lab / "helper.py").unlink()
    text = (lab / "autoresearch.toml").read_text().replace("time_budget = 3.0", "time_budget = 400.0")
    (lab / "autoresearch.toml").write_text(text)
    git(lab, "commit", "-qam", "more time")
    proc = run(lab, "a longer budget")
    assert proc.returncode == 5 and "autoresearch.toml" in proc.stdout


def test_bad_workspaces_are_clear_errors(lab, tmp_path):
    not_ws = tmp_path / "elsewhere"
    not_ws.mkdir()
    proc = run(not_ws, "x")
    assert proc.returncode == 1 and "autoresearch init" in proc.stderr and "Traceback" not in proc.stderr

    git(lab, "checkout", "-q", "-b", "feature")
    proc = run(lab, "x")
    assert proc.returncode == 1 and "not an autoresearch/<tag> branch" in proc.stderr
    git(lab, "checkout", "-q", "--detach")
    proc = run(lab, "x")
    assert proc.returncode == 1 and "detached HEAD" in proc.stderr
    git(lab, "checkout", "-q", "autoresearch/t")

    proc = run(lab, "x", env={"AUTORESEARCH_CACHE": str(tmp_path / "empty-cache")})
    assert proc.returncode == 1 and "autoresearch prepare" in proc.stderr
    assert not (lab / "results.tsv").exists() or len(tsv(lab)) == 0
