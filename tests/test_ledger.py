"""The ledger and the keep rule as plain units (no training)."""

from __future__ import annotations

import math
import sqlite3
import subprocess

import pytest

from autoresearch.ledger import Attempt, Experiment, Ledger, TSV_HEADER
from autoresearch.selection import decide, score


@pytest.fixture
def repo(tmp_path):
    subprocess.run(["git", "init", "-q", "-b", "autoresearch/x", str(tmp_path)], check=True)
    return tmp_path


def test_rows_and_results_tsv(repo):
    ledger = Ledger(repo)
    a = ledger.insert(Experiment(branch="autoresearch/x", commit="a" * 40, description="baseline"))
    a.status, a.val_bpb, a.memory_gb = "keep", 1.8123456, 0.61
    ledger.update(a)
    b = ledger.insert(Experiment(branch="autoresearch/x", commit="b" * 40, description="tab\there\nnewline"))
    b.status, b.error_class, b.memory_gb = "crash", "nan", 0.7
    ledger.update(b)
    ledger.insert(Experiment(branch="autoresearch/x", description="still running"))
    lines = (repo / "results.tsv").read_text().splitlines()
    assert lines == [TSV_HEADER, "aaaaaaa\t1.812346\t0.6\tkeep\tbaseline", "bbbbbbb\t0.000000\t0.0\tcrash\ttab here newline"]
    assert ledger.frontier("autoresearch/x").commit == "a" * 40
    assert ledger.frontier("autoresearch/other") is None
    assert [e.description for e in ledger.running()] == ["still running"]


def test_an_old_ledger_gains_new_columns(repo):
    (repo / ".autoresearch").mkdir()
    db = sqlite3.connect(repo / ".autoresearch" / "ledger.sqlite")
    db.execute('CREATE TABLE experiments (id INTEGER PRIMARY KEY AUTOINCREMENT, branch TEXT, "commit" TEXT, status TEXT)')
    db.execute("INSERT INTO experiments (branch, \"commit\", status) VALUES ('autoresearch/x', 'c', 'keep')")
    db.commit()
    db.close()
    ledger = Ledger(repo)
    assert ledger.get(1).commit == "c" and ledger.get(1).val_bpb is None
    ledger.insert(Experiment(branch="autoresearch/x", commit="d", eval_wall_seconds=2.5))
    assert ledger.all()[-1].eval_wall_seconds == 2.5


def test_an_old_runs_table_gains_the_swarm_columns_in_place(repo):
    (repo / ".autoresearch").mkdir()
    db = sqlite3.connect(repo / ".autoresearch" / "ledger.sqlite")
    db.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, experiment_id INTEGER, branch TEXT, "
               "commit_sha TEXT, kind TEXT, seed INTEGER, val_bpb REAL, status TEXT, error_class TEXT, "
               "log_path TEXT, finished_at REAL)")   # a ledger from before the swarm
    db.execute("INSERT INTO runs (branch, commit_sha, kind, seed, val_bpb, status) "
               "VALUES ('autoresearch/x', 'c', 'noise', 1, 2.0, 'ok')")
    db.commit()
    db.close()
    ledger = Ledger(repo)
    ledger.add_run("autoresearch/x", "c", "frontier", 2, 2.5, "ok", platform="p", worker="w1")
    ledger.add_run("autoresearch/x", "c", "noise", 3, 2.1, "ok")
    assert [(r["kind"], r["platform"], r["worker"]) for r in ledger.runs("autoresearch/x")] == \
        [("noise", None, None), ("frontier", "p", "w1"), ("noise", None, None)]
    assert ledger.samples("autoresearch/x", "c") == [2.0, 2.1]              # single-machine runs only
    assert ledger.platform_samples("autoresearch/x", "c", "p") == [2.5]


def test_an_old_ledger_gains_the_proposals_table_in_place(repo):
    (repo / ".autoresearch").mkdir()
    db = sqlite3.connect(repo / ".autoresearch" / "ledger.sqlite")
    db.execute('CREATE TABLE experiments (id INTEGER PRIMARY KEY AUTOINCREMENT, branch TEXT, "commit" TEXT, '
               'status TEXT, agent TEXT, model TEXT, cost_usd REAL)')
    db.execute("INSERT INTO experiments (branch, \"commit\", status, agent, model, cost_usd) "
               "VALUES ('autoresearch/x', 'c', 'keep', 'claude', 'm', 0.5)")
    db.commit()
    db.close()
    old = Ledger(repo, readonly=True)   # a read-only open upgrades nothing and finds no attempts
    assert old.attempts() == [] and old.get(1).cost_estimated is None
    old.close()
    ledger = Ledger(repo)
    assert ledger.get(1).cost_usd == 0.5 and ledger.attempts() == []
    a = ledger.add_attempt(Attempt(branch="autoresearch/x", agent="claude", model="m", outcome="transient",
                                   error="HTTP 529", cost_usd=None))
    a.experiment_id = 1
    ledger.update_attempt(a)
    [back] = ledger.attempts("autoresearch/x")
    assert (back.id, back.experiment_id, back.error, back.cost_usd) == (1, 1, "HTTP 529", None)
    assert ledger.attempts("autoresearch/other") == []


def test_strict_rule_and_metric_direction():
    assert decide(1.9, None).keep and "baseline" in decide(1.9, None).reason
    assert decide(1.80, 1.81).keep
    assert not decide(1.81, 1.81).keep          # equal is not an improvement
    assert not decide(1.82, 1.81).keep
    assert not decide(None, 1.81).keep and not decide(float("nan"), None).keep
    assert score(None) == math.inf and score(1.5) < score(None)
    with pytest.raises(ValueError):
        decide(1.0, 1.1, rule="lucky")
