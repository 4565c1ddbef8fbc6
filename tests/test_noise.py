"""The noise floor, the test split and the overfitting flag, end to end on CPU with few-second budgets."""

from __future__ import annotations

import json
import os
import sqlite3

import pytest

from conftest import git, new_lab, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture
def lab(cache_dir, tmp_path):
    return new_lab(tmp_path / "lab", budget=3)


def test_noise_before_a_baseline_is_a_clear_error(lab):
    first = run_cli("noise", cwd=lab)
    assert first.returncode == 1 and "run the baseline first" in first.stderr


def test_noise_command_measures_the_floor_and_kept_runs_get_a_test_score(baselined):
    lab = baselined   # its baseline kept (and its test split scored) by `run`
    tree = (lab / "train.py").read_text()

    done = run_cli("noise", "--runs", "2", "--json", cwd=lab)
    assert done.returncode == 0, done.stderr
    m = json.loads(done.stdout)
    assert len(m["values"]) == 2 and m["std"] > 0 and m["pooled_dof"] == 2 and m["pooled_std"] > 0
    assert m["commit"] == git(lab, "rev-parse", "HEAD")
    assert (lab / "train.py").read_text() == tree and git(lab, "status", "--porcelain") == ""

    db = sqlite3.connect(lab / ".autoresearch" / "ledger.sqlite")
    assert db.execute("SELECT runs, std FROM noise").fetchall() == [(2, pytest.approx(m["std"]))]
    seeds = [s for (s,) in db.execute("SELECT seed FROM runs WHERE kind = 'noise'")]
    val, test = db.execute("SELECT val_bpb, test_bpb FROM experiments WHERE id = 1").fetchone()
    db.close()
    assert seeds == [43, 44]
    assert test is not None and 0.5 < test < 10 and test != val  # the held-out split, scored for the keep

    status = run_cli("status", cwd=lab)
    assert "noise floor: std" in status.stdout and "test_bpb" in status.stdout
    as_json = json.loads(run_cli("status", "--json", cwd=lab).stdout)
    assert as_json["noise_std"] == pytest.approx(m["pooled_std"]) and as_json["frontier_test_bpb"] == test

    # the floor is measured on the frontier only: an edited train.py is refused and left as it is
    path = lab / "train.py"
    path.write_text(path.read_text() + "\n# my idea\n")
    refused = run_cli("noise", "--runs", "1", cwd=lab)
    assert refused.returncode == 1 and "frontier" in refused.stderr
    assert path.read_text().endswith("# my idea\n")

    # a floor on fewer repeats than the rule asks for (here 2 of 3; a measurement cut short by Ctrl-C leaves
    # one) is completed before the first decision: one repeat's floor can be near zero by chance
    path.write_text(tree.replace("MATRIX_LR = 0.04 ", "MATRIX_LR = 0.0004 ", 1))
    done = run_cli("run", "-m", "a much lower matrix lr", "--noise-runs", "3", cwd=lab)
    assert done.returncode == 0 and done.stdout.startswith("discard"), done.stdout + done.stderr
    assert "a noise floor of 2 degree(s) of freedom of 3" in done.stderr and "with 1 repeat(s)" in done.stderr
    db = sqlite3.connect(lab / ".autoresearch" / "ledger.sqlite")
    kinds = [k for (k,) in db.execute("SELECT kind FROM runs ORDER BY id")]
    db.close()
    assert kinds == ["experiment", "noise", "noise", "noise", "experiment"], kinds


def test_a_candidate_parked_by_a_killed_noise_measurement_is_put_back(workspace):
    from autoresearch.ledger import Ledger
    from autoresearch.recovery import recover

    root = workspace.root
    mine = (root / "train.py").read_text() + "\n# the candidate\n"
    (root / ".autoresearch").mkdir(exist_ok=True)
    (root / ".autoresearch" / "candidate-train.py").write_text(mine)
    messages = recover(root, Ledger(root))
    assert any("candidate train.py" in m for m in messages)
    assert (root / "train.py").read_text() == mine and not (root / ".autoresearch" / "candidate-train.py").exists()


def test_lineage_flags_val_improving_while_test_worsens(workspace, capsys):
    from autoresearch.history import format_lineage, lineage, reading
    from autoresearch.ledger import Experiment, Ledger
    from autoresearch.status import print_status

    root = workspace.root
    branch = git(root, "symbolic-ref", "--short", "HEAD")
    ledger = Ledger(root)
    for val, test in ((2.00, 2.10), (1.90, 2.05), (1.80, 2.20)):
        git(root, "commit", "-q", "--allow-empty", "-m", f"val {val}")
        ledger.insert(Experiment(branch=branch, commit=git(root, "rev-parse", "HEAD"), status="keep",
                                 val_bpb=val, test_bpb=test, description=f"val {val}"))
    with reading(root) as h:
        data = lineage(h)
    assert data["overfit"] and data["baseline_test_bpb"] == 2.10 and data["frontier_test_bpb"] == 2.20
    assert [st["val_up_test_down"] for st in data["steps"]] == [False, False, True]
    assert data["flagged_steps"] == [data["steps"][2]["id"]]
    text = format_lineage(data)
    assert "WARNING: val_bpb improved while test_bpb got worse" in text and "<- val better, test worse" in text
    with reading(root) as h:
        print_status(h)
    assert "may be fitting the validation set" in capsys.readouterr().out


def test_sandbox_require_is_a_clear_error_where_bubblewrap_is_missing(lab):
    from autoresearch.agents.codex_cli import path_without_bwrap

    env = {"PATH": path_without_bwrap(os.environ["PATH"])}
    done = run_cli("run", "-m", "x", "--sandbox", "require", cwd=lab, env=env)
    assert done.returncode == 1 and "sandbox is required but unavailable" in done.stderr
    assert "bubblewrap is not installed" in done.stderr
    assert not (lab / ".autoresearch" / "ledger.sqlite").exists() or git(lab, "log", "--format=%s", "-1") != "x"
