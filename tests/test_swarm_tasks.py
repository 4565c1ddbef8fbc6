"""`autoresearch swarm` on a task workspace (task.toml): the README's user task (a metric to maximize),
two workers as Ray actors, each sandboxed run and frozen evaluation done by the worker, decisions in the
task's direction, the hidden split scored for kept results, a broken evaluator stopping the swarm with a
clear line and nothing kept from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import rows, run_cli
from test_swarm import assert_clean, script
from test_tasks import USER_TASK, new_task_lab, write_task

pytestmark = pytest.mark.slow
AGENT = "swarm_agent:Scripted"


@pytest.fixture
def lab(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("AUTORESEARCH_WORKSPACE", raising=False)
    return new_task_lab(tmp_path / "lab", str(write_task(tmp_path / "guess", USER_TASK)))


def swarm(lab: Path, steps: dict, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **script(lab, steps)}
    cmd = [sys.executable, "-m", "autoresearch.cli", "swarm", "--agent", AGENT, "--backoff", "1000", *args]
    return subprocess.run(cmd, cwd=lab, env=env, capture_output=True, text=True, timeout=600)


def test_a_swarm_researches_a_task_in_its_direction(lab):
    # w1 moves X closer to the hidden target 7 (better: the metric is -(x - 7)^2, maximized), then away
    done = swarm(lab, {"w1": [{"replace": ["X = 3.0", "X = 6.0"], "description": "closer"},
                              {"replace": ["X = 6.0", "X = 1.0"], "description": "further"}]},
                 "--workers", "2", "--max-experiments", "3")
    assert done.returncode == 0, done.stdout + done.stderr
    r = {x["description"]: x for x in rows(lab)}
    assert {"baseline", "closer", "further"} <= set(r), done.stdout + done.stderr
    assert [r[d]["status"] for d in ("baseline", "closer", "further")] == ["keep", "keep", "discard"], done.stdout
    assert r["baseline"]["val_bpb"] == pytest.approx(-16.0) and r["closer"]["val_bpb"] == pytest.approx(-1.0)
    assert r["closer"]["test_bpb"] == pytest.approx(-0.25)    # the hidden split (target 6.5), kept results only
    assert r["further"]["test_bpb"] is None
    assert r["closer"]["worker"] == "w1" and r["closer"]["sandbox"] in ("bwrap", "none")
    assert "closeness" in done.stdout                          # the hub speaks of the task's metric
    assert "X = 6.0" in (lab / "guess.py").read_text()         # the workspace is on the kept candidate
    assert_clean(lab)
    status = json.loads(run_cli("status", "--json", cwd=lab).stdout)
    assert status["metric"] == "closeness" and status["direction"] == "maximize"
    assert status["best_val_bpb"] == pytest.approx(-1.0)


def test_a_broken_evaluator_stops_the_swarm_with_a_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    broken = {**USER_TASK, "score.py": USER_TASK["score.py"] + "raise SystemExit('the grader is broken')\n"}
    lab = new_task_lab(tmp_path / "lab", str(write_task(tmp_path / "guess", broken)))
    done = swarm(lab, {}, "--workers", "1", "--max-experiments", "2")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "the grader is broken" in done.stdout + done.stderr and "fix the task" in done.stdout + done.stderr
    assert [(x["status"], x["error_class"]) for x in rows(lab)] == [("crash", "lost")]   # nothing kept
    assert not (lab / ".autoresearch" / "swarm").exists()
