"""SIGKILL the harness at every step of an experiment, then recover: consistent tree, one row, no orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoresearch.procs import owned_pids
from conftest import run_cli
from test_run import edit, git, lab, rows, run, tsv, wait_for_training  # noqa: F401 - lab is a fixture

pytestmark = pytest.mark.slow


def start_paused(root: Path, phase: str, message: str) -> subprocess.Popen:
    """`autoresearch run` that stops at `phase` (test seam) so it can be killed there."""
    env = {**os.environ, "AUTORESEARCH_TEST_PAUSE": phase}
    proc = subprocess.Popen([sys.executable, "-m", "autoresearch.cli", "run", "-m", message, "--rule", "strict"], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    marker = root / ".autoresearch" / f"paused-{phase}"
    deadline = time.monotonic() + 240
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run ended before {phase}: {proc.stdout.read()} {proc.stderr.read()}")
        assert time.monotonic() < deadline, f"never reached {phase}"
        time.sleep(0.1)
    marker.unlink()
    return proc


def no_orphans(root: Path) -> None:
    deadline = time.monotonic() + 10
    while owned_pids(root.resolve()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert owned_pids(root.resolve()) == []


@pytest.mark.parametrize("phase, candidate", [
    ("committed", "good"),
    ("training", "good"),
    ("evaluating", "good"),
    ("recording", "syntax"),  # a crash is recorded through the same step: the kill needs no training before it
    ("resetting", "syntax"),
])
def test_sigkill_at_each_step_then_recover(baselined, phase, candidate):
    lab = baselined
    frontier = git(lab, "rev-parse", "HEAD")
    frontier_train = (lab / "train.py").read_text()
    if candidate == "syntax":
        edit(lab, "import gc\n", "import gc\ndef broken(:\n")
    else:
        edit(lab, "DEPTH = 2 ", "DEPTH = 1 ")
    proc = start_paused(lab, phase, f"killed while {phase}")
    if phase == "training":
        time.sleep(3)  # let train.py get going (and spawn its compile workers)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    # the recovery, by the command (no training; `loop` and `swarm` recover the same way first, and a killed run
    # met by the next `run` is test_run.py's)
    rec = run_cli("recover", cwd=lab)
    done = "reset the tree" if phase == "resetting" else "recorded as crash"  # resetting: verdict recorded
    assert rec.returncode == 0 and done in rec.stderr, rec.stderr
    again = run_cli("recover", cwd=lab)
    assert "nothing to recover" in again.stderr  # idempotent
    no_orphans(lab)

    r = rows(lab)
    killed = r[1]
    assert killed["description"] == f"killed while {phase}"
    if phase == "resetting":  # the verdict was recorded before the kill; only the reset was left
        assert (killed["status"], killed["error_class"]) == ("crash", "syntax")
    else:
        assert (killed["status"], killed["error_class"]) == ("crash", "interrupted")
    assert [x["description"] for x in r].count(f"killed while {phase}") == 1  # recorded once
    assert all(x["status"] != "running" for x in r)
    assert [row[4] for row in tsv(lab)].count(f"killed while {phase}") == 1
    # the candidate is kept under a ref; the frontier (or the next kept experiment on it) is checked out
    kept = git(lab, "rev-parse", f"refs/autoresearch/discarded/{killed['id']:04d}")
    assert kept == killed["commit"]
    assert "DEPTH = 1 " in git(lab, "show", f"{kept}:train.py") or candidate == "syntax"
    head = git(lab, "rev-parse", "HEAD")
    assert head == frontier or git(lab, "rev-parse", "HEAD~1") == frontier
    assert git(lab, "status", "--porcelain") == ""
    if phase == "committed":
        assert (lab / "train.py").read_text() == frontier_train


def test_kill_before_commit_keeps_the_users_edit(baselined):
    """Killed before its commit: the uncommitted train.py edit must survive recovery untouched."""
    lab = baselined
    frontier = git(lab, "rev-parse", "HEAD")
    edit(lab, "DEPTH = 2 ", "DEPTH = 1 ")
    from autoresearch.ledger import Experiment, Ledger
    from autoresearch.recovery import Journal, recover

    # reproduce the state of a run killed right after writing its journal, before committing
    ledger = Ledger(lab)
    exp = ledger.insert(Experiment(branch="autoresearch/t", parent=frontier, description="never committed"))
    Journal(lab).write(id=exp.id, phase="started", frontier=frontier, head=frontier)
    messages = recover(lab, ledger)
    assert any("interrupted" in m for m in messages)
    assert git(lab, "rev-parse", "HEAD") == frontier
    assert "DEPTH = 1 " in (lab / "train.py").read_text()  # the edit is still there
    assert ledger.get(exp.id).status == "crash"


def test_a_second_run_is_refused_while_one_holds_the_workspace(lab):
    proc = start_paused(lab, "committed", "first")
    try:
        second = run(lab, "second")
        assert second.returncode == 1 and "another autoresearch run holds this workspace" in second.stderr
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert run_cli("recover", cwd=lab).returncode == 0
    assert [x["description"] for x in rows(lab)] == ["first"]


def test_ctrl_c_during_training_records_and_resets(baselined):
    lab = baselined
    frontier = git(lab, "rev-parse", "HEAD")
    edit(lab, "DEPTH = 2 ", "DEPTH = 1 ")
    proc = subprocess.Popen([sys.executable, "-m", "autoresearch.cli", "run", "-m", "interrupted by hand", "--rule", "strict"], cwd=lab,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_training(proc, lab / "runs" / "0002.log")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert out.startswith("crash") and "[interrupted]" in out, out + err
    assert git(lab, "rev-parse", "HEAD") == frontier and git(lab, "status", "--porcelain") == ""
    assert rows(lab)[-1]["status"] == "crash"
    no_orphans(lab)


def test_corrupt_ledger_is_rebuilt_from_results_tsv(baselined):
    lab = baselined
    edit(lab, "import gc\n", "import gc\ndef broken(:\n")
    assert run(lab, "broken").returncode == 3
    before = tsv(lab)
    (lab / ".autoresearch" / "ledger.sqlite").write_bytes(b"this is not a database" * 100)
    for extra in ("-wal", "-shm"):
        (lab / ".autoresearch" / f"ledger.sqlite{extra}").unlink(missing_ok=True)
    status = run_cli("status", cwd=lab)
    assert status.returncode == 0, status.stderr
    assert "2 experiments, 1 kept" in status.stdout
    assert tsv(lab) == before
    assert list((lab / ".autoresearch").glob("ledger.sqlite.corrupt-*"))  # the old file is kept
    nxt = run(lab, "after the rebuild")  # the frontier comes back from the rebuilt rows
    assert nxt.returncode == 0 and "vs frontier" in nxt.stdout, nxt.stdout + nxt.stderr


def test_hand_edited_results_tsv_is_kept_aside(baselined):
    lab = baselined
    with open(lab / "results.tsv", "a") as f:
        f.write("abcdef0\t1.000000\t0.1\tkeep\tmy note\n")
    edit(lab, "import gc\n", "import gc\ndef broken(:\n")  # any recorded row rewrites the file: a crash is quick
    assert run(lab, "second").returncode == 3
    saved = list(lab.glob("results.tsv.edited-*"))
    assert len(saved) == 1 and "my note" in saved[0].read_text()
    assert len(tsv(lab)) == 2


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MB tmpfs (needs root, as on the CI machine); skipped where it cannot be mounted."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_disk_full_loses_nothing_and_recovers(baseline_template, small_disk):
    import shutil

    root = small_disk / "lab"
    shutil.copytree(baseline_template, root, symlinks=True)  # a workspace with its baseline kept, on the small disk
    frontier = git(root, "rev-parse", "HEAD")
    edit(root, "DEPTH = 2 ", "DEPTH = 1 ")
    filler = small_disk / "filler"
    with open(filler, "wb") as f:  # leave ~200 KB: enough to commit, not to write the model or much log
        f.write(b"\0" * (shutil.disk_usage(small_disk).free - 200 * 1024))
    proc = run(root, "while the disk is full")
    assert proc.returncode != 0
    said = proc.stdout + proc.stderr
    assert "disk" in said.lower() or "space" in said.lower(), said
    assert "Traceback" not in proc.stderr

    filler.unlink()
    rec = run_cli("recover", cwd=root)
    assert rec.returncode == 0, rec.stderr
    r = rows(root)
    assert [x["status"] for x in r] == ["keep", "crash"] and r[1]["error_class"] in ("disk-full", "interrupted")
    assert git(root, "rev-parse", "HEAD") == frontier and git(root, "status", "--porcelain") == ""
    # the candidate survives: under its ref, or still in the tree if it never got committed
    ref = git(root, "for-each-ref", "--format=%(objectname)", "refs/autoresearch/discarded/")
    assert ref and "DEPTH = 1 " in git(root, "show", f"{ref.split()[0]}:train.py")
    assert [row[3] for row in tsv(root)] == ["keep", "crash"]
