"""`autoresearch loop`: the offline optuna searcher end to end, crash -> fix, scope, resume, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import scripted_agent
from autoresearch import agents
from autoresearch.loop import Limits, run_loop
from conftest import run_cli
from test_run import git, lab, rows, tsv  # noqa: F401 - lab is a fixture

pytestmark = pytest.mark.slow


def optuna_trials(root):
    import optuna

    storage = f"sqlite:///{root / '.autoresearch' / 'optuna.db'}"
    return optuna.load_study(study_name="autoresearch/t", storage=storage).get_trials(deepcopy=False)


def test_optuna_loop_records_experiments_and_only_improves(lab):
    proc = run_cli("loop", "--agent", "optuna", "--max-experiments", "4", cwd=lab)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = rows(lab)
    assert len(r) == 4 and r[0]["description"] == "baseline"
    assert all(x["agent"] == "optuna" for x in r)
    assert all(x["description"].startswith("optuna: ") and x["model"] == "optuna-tpe" for x in r[1:])
    kept = [x["val_bpb"] for x in r if x["status"] == "keep"]
    assert kept == sorted(kept, reverse=True) and len(set(kept)) == len(kept)  # the frontier only improves
    assert len(tsv(lab)) == 4
    trials = optuna_trials(lab)
    assert len(trials) == 4  # the baseline as a fixed trial + 3 proposals, every one told
    assert all(t.state.name in ("COMPLETE", "FAIL") for t in trials)
    assert git(lab, "status", "--porcelain") == ""
    assert "loop stopped: 4 experiments done" in proc.stdout

    # a killed loop resumes: the study continues, no second baseline
    env = {**os.environ}
    p = subprocess.Popen([sys.executable, "-m", "autoresearch.cli", "loop", "--max-experiments", "3"], cwd=lab, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = lab / "runs" / "0005.log"
    deadline = time.monotonic() + 120
    while not (log.exists() and "Vocab size" in log.read_text()):
        assert time.monotonic() < deadline and p.poll() is None
        time.sleep(0.1)
    p.send_signal(signal.SIGKILL)
    p.wait()
    again = run_cli("loop", "--max-experiments", "1", cwd=lab)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "recover:" in again.stderr
    r = rows(lab)
    assert [x["description"] for x in r].count("baseline") == 1
    assert r[4]["status"] == "crash" and r[4]["error_class"] == "interrupted"
    assert len(r) == 6 and r[5]["status"] in ("keep", "discard")
    trials = optuna_trials(lab)
    assert len(trials) == 6 and all(t.state.name in ("COMPLETE", "FAIL") for t in trials)


@pytest.fixture
def scripted(monkeypatch):
    monkeypatch.setitem(agents.REGISTRY, "scripted", "scripted_agent:ScriptedAgent")
    scripted_agent.SCRIPT.clear()
    scripted_agent.SEEN.clear()
    scripted_agent.OBSERVED.clear()
    return scripted_agent


def test_crash_gets_one_fix_attempt_and_scope_violations_are_put_aside(lab, scripted):
    scripted.SCRIPT.extend([
        {"replace": ("DEPTH = 2 ", "DEPTH = 2 +* "), "description": "deeper (typo)"},      # crash: syntax
        {"replace": ("DEPTH = 2 ", "DEPTH = 1 "), "description": "shallower"},            # the fix attempt
        {"write": {"program.md": "new rules\n", "notes.txt": "x\n"}, "description": "rewrite the rules"},
        {"fail": "the model said nothing useful"},
        {"replace": ("SEED = 42 ", "SEED = 7 "), "description": "another seed"},
    ])
    done = run_loop(lab, "scripted", Limits(max_experiments=5))
    assert done == 5
    r = rows(lab)
    assert [x["status"] for x in r][:4] == ["keep", "crash", r[2]["status"], "rejected"]
    assert r[1]["error_class"] == "syntax" and r[2]["description"] == "fix: shallower"
    assert r[2]["status"] in ("keep", "discard")
    fix_ctx = scripted.SEEN[1]
    assert fix_ctx.failure is not None and fix_ctx.failure.error_class == "syntax"
    assert "+*" in fix_ctx.failure.diff and fix_ctx.failure.log_tail
    assert "deeper (typo)" in fix_ctx.history and "[syntax]" in fix_ctx.history
    # the rejected agent edit was put aside, not lost, and the loop went on
    assert r[3]["error_class"] == "scope"
    assert (lab / "program.md").read_text() != "new rules\n" and not (lab / "notes.txt").exists()
    assert "rejected experiment 4" in git(lab, "stash", "list")
    # the failed proposal cost a back-off but no experiment; the next one ran
    assert r[4]["description"] == "another seed" and r[4]["agent"] == "scripted"
    assert r[4]["input_tokens"] == 10 and r[4]["model"] == "script"
    assert [e.id for e in scripted.OBSERVED] == [x["id"] for x in r]
    assert git(lab, "status", "--porcelain") == ""


def test_loop_refuses_to_start_on_foreign_changes_and_unknown_agents(lab):
    (lab / "mine.txt").write_text("keep me\n")
    proc = run_cli("loop", "--max-experiments", "1", cwd=lab)
    assert proc.returncode == 1 and "mine.txt" in proc.stderr
    assert (lab / "mine.txt").read_text() == "keep me\n"
    proc = run_cli("loop", "--agent", "nobody", cwd=lab)
    assert proc.returncode == 1 and "unknown agent 'nobody'" in proc.stderr


def test_ctrl_c_stops_the_loop_cleanly_and_it_resumes(lab):
    p = subprocess.Popen([sys.executable, "-m", "autoresearch.cli", "loop", "--max-experiments", "3"], cwd=lab,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = lab / "runs" / "0002.log"
    deadline = time.monotonic() + 180
    while not (log.exists() and "Vocab size" in log.read_text()):
        assert time.monotonic() < deadline and p.poll() is None, p.stderr.read() if p.poll() is not None else ""
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    r = rows(lab)
    assert [x["status"] for x in r] == ["keep", "crash"] and r[1]["error_class"] == "interrupted"
    assert git(lab, "status", "--porcelain") == ""
    assert git(lab, "rev-parse", "HEAD") == r[0]["commit"]
    again = run_cli("loop", "--max-experiments", "1", cwd=lab)
    assert again.returncode == 0 and len(rows(lab)) == 3
