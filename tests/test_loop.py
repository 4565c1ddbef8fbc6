"""`autoresearch loop`: the offline optuna searcher end to end, crash -> fix, scope, resume, Ctrl-C."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys

import pytest

import scripted_agent
from autoresearch import agents
from autoresearch.loop import Limits, Policy, run_loop
from conftest import run_cli
from test_run import git, lab, rows, tsv, wait_for_training  # noqa: F401 - lab is a fixture

pytestmark = pytest.mark.slow


def optuna_trials(root):
    import optuna

    storage = f"sqlite:///{root / '.autoresearch' / 'optuna.db'}"
    return optuna.load_study(study_name="autoresearch/t", storage=storage).get_trials(deepcopy=False)


def test_optuna_loop_records_experiments_and_only_improves(baselined):
    # from a kept baseline (the loop running a fresh branch's baseline itself, the same code for every task:
    # tests/test_task_prompt.py); the study is told the frontier as its first trial, scored, not re-run
    lab = baselined
    proc = run_cli("loop", "--agent", "optuna", "--max-experiments", "1", "--rule", "strict", cwd=lab)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = rows(lab)
    assert len(r) == 2 and r[0]["description"] == "baseline"
    assert all(x["agent"] == "optuna" for x in r[1:])
    assert all(x["description"].startswith("optuna: ") and x["model"] in ("optuna-local", "optuna-tpe") for x in r[1:])
    assert all(x["cost_usd"] == 0.0 and not x["cost_estimated"] for x in r[1:])   # no model: known to be free
    status = run_cli("status", cwd=lab).stdout
    assert "agents: optuna (optuna-" in status and "1 proposals (0 failed), 0 tokens in / 0 out, cost $0.0000" in status
    kept = [x["val_bpb"] for x in r if x["status"] == "keep"]
    assert kept == sorted(kept, reverse=True) and len(set(kept)) == len(kept)  # the frontier only improves
    assert len(tsv(lab)) == 2
    trials = optuna_trials(lab)
    assert len(trials) == 2  # the baseline as a fixed trial + the proposal, every one told
    assert all(t.state.name in ("COMPLETE", "FAIL") for t in trials)
    assert git(lab, "status", "--porcelain") == ""
    assert "loop stopped: 1 experiments done" in proc.stdout

    # a killed loop resumes: the study continues, no second baseline
    env = {**os.environ}
    p = subprocess.Popen([sys.executable, "-m", "autoresearch.cli", "loop", "--max-experiments", "3", "--rule", "strict"], cwd=lab, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_training(p, lab / "runs" / "0003.log")
    p.send_signal(signal.SIGKILL)
    p.wait()
    again = run_cli("loop", "--max-experiments", "1", "--rule", "strict", cwd=lab)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "recover:" in again.stderr
    r = rows(lab)
    assert [x["description"] for x in r].count("baseline") == 1
    assert r[2]["status"] == "crash" and r[2]["error_class"] == "interrupted"
    assert len(r) == 4 and r[3]["status"] in ("keep", "discard")
    trials = optuna_trials(lab)
    assert len(trials) == 4 and all(t.state.name in ("COMPLETE", "FAIL") for t in trials)


@pytest.fixture
def scripted(monkeypatch):
    monkeypatch.setitem(agents.REGISTRY, "scripted", "scripted_agent:ScriptedAgent")
    scripted_agent.SCRIPT.clear()
    scripted_agent.SEEN.clear()
    scripted_agent.OBSERVED.clear()
    scripted_agent.OBSERVE_FAILS.clear()
    return scripted_agent


def test_crash_gets_one_fix_attempt_and_scope_violations_are_put_aside(baselined, scripted, capsys):
    lab = baselined   # a kept baseline: the loop starts from it
    scripted.SCRIPT.extend([
        {"replace": ("DEPTH = 2 ", "DEPTH = 2 +* "), "description": "deeper (typo)"},      # crash: syntax
        {"replace": ("DEPTH = 2 ", "DEPTH = 1 "), "description": "shallower"},            # the fix attempt
        {"write": {"program.md": "new rules\n", "notes.txt": "x\n"}, "description": "rewrite the rules"},
        {"fail": "the model said nothing useful"},
        # the last: a crash that needs no training (the limit is reached, so no fix attempt follows it)
        {"replace": ("torch.manual_seed(SEED)", "torch.manual_seed(7 +* )"), "description": "another seed"},
    ])
    scripted.OBSERVE_FAILS.add("fix: shallower")
    done = run_loop(lab, "scripted", Limits(max_experiments=4), rule="strict", policy=Policy(backoff=0.1))
    assert done == 4
    out = capsys.readouterr().out
    # observe() failing is said, and the loop goes on (the experiment is recorded either way)
    assert "warning: scripted could not take in the result of #3" in out and "scripted observe failure" in out
    assert "retrying in 0.1 s (1 of 10 failures in a row)" in out
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
    assert r[4]["description"] == "another seed" and r[4]["agent"] == "scripted" and len(r) == 5
    assert (r[4]["status"], r[4]["error_class"]) == ("crash", "syntax")
    assert r[4]["input_tokens"] == 10 and r[4]["model"] == "script"
    assert [e.id for e in scripted.OBSERVED] == [x["id"] for x in r[1:]]   # all this loop ran
    assert git(lab, "status", "--porcelain") == ""
    # every proposal attempt is traced, the failed one too, and linked to the experiment it became
    db = sqlite3.connect(lab / ".autoresearch" / "ledger.sqlite")
    trace = db.execute("SELECT experiment_id, outcome, description, reply_path FROM proposals ORDER BY id").fetchall()
    db.close()
    assert [(t[0], t[1]) for t in trace] == [(2, "proposed"), (3, "proposed"), (4, "proposed"), (None, "reply"),
                                             (5, "proposed")]
    assert "the model said nothing useful" in (lab / trace[3][3]).read_text()
    assert "#5 " in out and ":: another seed" in out   # result lines carry the ledger id and the description


def test_loop_refuses_to_start_on_foreign_changes_and_unknown_agents(lab):
    (lab / "mine.txt").write_text("keep me\n")
    proc = run_cli("loop", "--max-experiments", "1", cwd=lab)
    assert proc.returncode == 1 and "mine.txt" in proc.stderr
    assert (lab / "mine.txt").read_text() == "keep me\n"
    proc = run_cli("loop", "--agent", "nobody", cwd=lab)
    assert proc.returncode == 1 and "unknown agent 'nobody'" in proc.stderr


def test_ctrl_c_stops_the_loop_cleanly_and_it_resumes(baselined):
    lab = baselined   # a kept baseline: the loop's first experiment is its own
    p = subprocess.Popen([sys.executable, "-m", "autoresearch.cli", "loop", "--max-experiments", "3", "--rule", "strict"], cwd=lab,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_training(p, lab / "runs" / "0002.log")
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    r = rows(lab)
    assert [x["status"] for x in r] == ["keep", "crash"] and r[1]["error_class"] == "interrupted"
    assert git(lab, "status", "--porcelain") == ""
    assert git(lab, "rev-parse", "HEAD") == r[0]["commit"]
    again = run_cli("loop", "--max-experiments", "1", "--rule", "strict", cwd=lab)
    assert again.returncode == 0 and len(rows(lab)) == 3


class ChatStandIn:
    """A scripted OpenAI-compatible server on loopback: /v1/models and /v1/chat/completions."""

    LINE = "DEPTH = 2                  # number of transformer layers"
    REPLY = ("I will try a shallower model.\nDESCRIPTION: depth 1 instead of 2\n"
             f"<<<<<<< SEARCH\n{LINE}\n=======\n{LINE.replace('2 ', '1 ', 1)}\n>>>>>>> REPLACE\n")

    def __enter__(self):
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        requests = self.requests = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, body: dict):
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send({"data": [{"id": "fake-model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                requests.append(body)
                self._send({"choices": [{"message": {"role": "assistant", "content": ChatStandIn.REPLY},
                                         "finish_reason": "stop"}],
                            "usage": {"prompt_tokens": 1234, "completion_tokens": 56}, "model": "fake-model"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_loop_with_an_openai_compatible_server(baselined):
    lab = baselined   # a kept baseline: the model is asked first
    with ChatStandIn() as server:
        proc = run_cli("loop", "--agent", "openai", "--base-url", server.url, "--model", "fake-model",
                       "--max-experiments", "1", "--rule", "strict", cwd=lab)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    r = rows(lab)
    assert [x["description"] for x in r] == ["baseline", "depth 1 instead of 2"]
    assert (r[1]["agent"], r[1]["model"], r[1]["input_tokens"], r[1]["output_tokens"]) == ("openai", "fake-model", 1234, 56)
    assert r[1]["status"] in ("keep", "discard")
    commit = r[1]["commit"]
    assert "DEPTH = 1 " in git(lab, "show", f"{commit}:train.py")  # the edit landed in train.py
    (req,) = server.requests
    prompt = req["messages"][-1]["content"]
    assert "#1 keep" in prompt and ":: baseline" in prompt      # the history from the ledger
    assert "DEPTH = 2 " in prompt                               # the frontier's train.py
    assert "never stop" in prompt.lower()                       # program.md
    assert "SEARCH" in req["messages"][0]["content"] and req["model"] == "fake-model"


def test_unreachable_server_is_a_clear_error_before_the_loop(lab):
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = run_cli("loop", "--agent", "openai", "--base-url", f"http://127.0.0.1:{port}/v1", "--model", "m", cwd=lab)
    assert proc.returncode == 2 and f"127.0.0.1:{port}" in proc.stderr and "Traceback" not in proc.stderr
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    proc = subprocess.run([sys.executable, "-m", "autoresearch.cli", "loop", "--agent", "anthropic"], cwd=lab,
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "ANTHROPIC_API_KEY" in proc.stderr
    assert not (lab / ".autoresearch" / "ledger.sqlite").exists() or rows(lab) == []
