"""The loop's failure policy and its trace of every proposal, through the real CLI against loopback servers
that fail in each way a real one does. Nothing here trains: the workspace's frontier is a ledger row, so the
loop goes straight to asking the agent, and every agent here fails before an experiment would start."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from autoresearch.git import current_branch, git
from autoresearch.ledger import Experiment, Ledger
from conftest import run_cli, table

NO_EDIT = "DESCRIPTION: think harder\nI have no edit this time."


class FailingServer:
    """An OpenAI-compatible server on 127.0.0.1 whose /models answers and whose chat endpoint fails in `mode`:
    an HTTP status (404, 401, 500), `drop` (accept, read the request, close without a word), `hang` (answer
    after `delay` seconds) or `no-edit` (a 200 whose reply carries no edit)."""

    def __init__(self, mode: str, delay: float = 5.0):
        self.mode, self.delay, self.posts = mode, delay, 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (the hang mode)

            def do_GET(self):
                self._send(200, {"data": [{"id": "served-model"}]})

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.posts += 1
                if outer.mode == "drop":
                    self.close_connection = True
                    return
                if outer.mode == "hang":
                    time.sleep(outer.delay)
                if outer.mode == "no-edit":
                    return self._send(200, {"model": "served-model", "choices": [{"message": {
                        "role": "assistant", "content": NO_EDIT}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 900, "completion_tokens": 12}})
                status = int(outer.mode) if outer.mode.isdigit() else 200
                messages = {404: "The model `nope` does not exist", 401: "Incorrect API key provided",
                            500: "the model crashed"}
                self._send(status, {"error": {"message": messages.get(status, "?"), "type": "scripted"}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def ready(workspace, monkeypatch):
    """A prepared workspace whose frontier is already measured (a ledger row at HEAD): no baseline to train."""
    root = workspace.root
    ledger = Ledger(root)
    ledger.insert(Experiment(branch=current_branch(root), parent="", commit=git(root, "rev-parse", "HEAD"),
                             status="keep", description="baseline", val_bpb=2.0, finished_at=time.time()))
    ledger.write_tsv()
    ledger.close()
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "AUTORESEARCH_MODEL", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    return root


def attempts(root: Path) -> list[dict]:
    return table(root, "proposals")


def loop(root: Path, url: str, *extra: str):
    return run_cli("loop", "--agent", "openai", "--base-url", url, "--model", "nope", "--rule", "strict",
                   "--max-experiments", "1", "--backoff", "0.05", *extra, cwd=root, timeout=120)


def experiments(root: Path) -> int:
    db = sqlite3.connect(root / ".autoresearch" / "ledger.sqlite")
    n = db.execute("SELECT COUNT(*) FROM experiments").fetchone()[0]
    db.close()
    return n


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("status, says", [(404, "does not exist"), (401, "Incorrect API key")])
def test_a_configuration_error_stops_the_loop_at_once(ready, status, says):
    with FailingServer(str(status)) as server:
        proc = loop(ready, server.url)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    [line] = error_lines(proc.stderr)
    assert f"HTTP {status}" in line and says in line and "retrying cannot help" in line
    assert "Traceback" not in proc.stderr and "retrying in" not in proc.stdout
    assert server.posts == 1
    [a] = attempts(ready)
    assert (a["agent"], a["model"], a["outcome"], a["experiment_id"]) == ("openai", "nope", "config", None)
    assert a["seconds"] is not None and says in a["error"]
    assert says in (ready / a["reply_path"]).read_text() and a["reply_path"] == "runs/proposals/0001.txt"
    assert experiments(ready) == 1 and git(ready, "status", "--porcelain") == ""


@pytest.mark.parametrize("mode, says", [
    ("500", "HTTP 500"),
    ("drop", "the server accepted the connection and closed it without an answer"),
    ("hang", "no answer within 1 s"),
])
def test_transient_failures_back_off_then_stop_saying_what_failed(ready, mode, says):
    with FailingServer(mode, delay=4) as server:
        proc = loop(ready, server.url, "--max-failures", "3", "--request-timeout", "1")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    [line] = error_lines(proc.stderr)
    assert "3 proposals failed in a row (--max-failures 3)" in line and says in line
    assert "cannot connect" not in proc.stdout + proc.stderr
    assert server.posts == 3
    # off a terminal: a timestamped line for each step, the waits doubling
    waits = re.findall(r"^\d\d:\d\d:\d\d retrying in ([\d.]+) s", proc.stdout, re.M)
    assert [float(w) for w in waits] == [0.05, 0.1]
    assert proc.stdout.count("asking openai for a proposal") == 3
    assert all(a["outcome"] == "transient" and says in a["error"] for a in attempts(ready))
    assert len(attempts(ready)) == 3 and experiments(ready) == 1
    assert git(ready, "status", "--porcelain") == ""


def test_replies_that_cannot_be_used_are_traced_with_their_tokens(ready):
    with FailingServer("no-edit") as server:
        proc = loop(ready, server.url, "--max-failures", "2")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "no '<<<<<<< SEARCH'" in error_lines(proc.stderr)[0]
    rows = attempts(ready)
    assert [r["outcome"] for r in rows] == ["reply", "reply"]
    # the model as the server reported it, and what the failed attempts cost in tokens
    assert all((r["model"], r["input_tokens"], r["output_tokens"]) == ("served-model", 900, 12) for r in rows)
    assert all(r["cost_usd"] is None for r in rows)   # no cost is known: none is made up
    assert NO_EDIT in (ready / rows[0]["reply_path"]).read_text()


def test_an_edit_waiting_in_train_py_does_not_stop_the_loop_and_strays_are_named_whole(ready):
    train = ready / "train.py"
    train.write_text(train.read_text() + "\n# waiting edit\n")
    program = ready / "program.md"
    program.write_text(program.read_text() + "\nmore\n")
    proc = run_cli("loop", "--max-experiments", "1", cwd=ready)
    assert proc.returncode == 1
    [line] = error_lines(proc.stderr)
    assert re.search(r"outside train.py \(([^)]*)\)", line).group(1) == "program.md"  # whole, and only it
    git(ready, "checkout", "--", "program.md")
    with FailingServer("404") as server:   # the loop gets past its start with train.py edited
        proc = loop(ready, server.url)
    assert proc.returncode == 2 and server.posts == 1, proc.stderr
    assert train.read_text().endswith("# waiting edit\n")   # a failed proposal leaves it as it was


# --------------------------------------------------------------------------- Claude Code in the loop

def claude_env(tmp_path: Path) -> dict:
    from test_agents_cli import need

    home = tmp_path / "claude-home"
    home.mkdir(exist_ok=True)
    return {"AUTORESEARCH_CLAUDE_BIN": need("claude"), "ANTHROPIC_API_KEY": "dummy", "HOME": str(home),
            "DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            # git, committing each experiment, no longer finds the user's identity in that HOME
            "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@example.com"}


def test_what_claude_was_refused_is_stored_and_printed(ready, tmp_path):
    from test_agents_cli import AnthropicStandIn

    program = (ready / "program.md").read_text()
    server = AnthropicStandIn(ready / "program.md", program.splitlines()[0], "# rewritten by the agent",
                              "DESCRIPTION: edit the instructions")
    try:
        proc = run_cli("loop", "--agent", "claude", "--base-url", server.url, "--model", "claude-standin-1",
                       "--max-experiments", "1", "--max-failures", "1", "--rule", "strict", cwd=ready,
                       env=claude_env(tmp_path), timeout=180)
    finally:
        server.close()
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "refused: Edit program.md" in proc.stdout and "without changing train.py" in proc.stderr
    [a] = attempts(ready)
    assert (a["agent"], a["outcome"], a["refused"], a["model"]) == ("claude", "reply", "Edit program.md",
                                                                    "claude-standin-1")
    assert a["output_tokens"] and a["cost_usd"] is None   # through a base URL of one's own no cost is known
    assert "edit the instructions" in (ready / a["reply_path"]).read_text()
    assert (ready / "program.md").read_text() == program and git(ready, "status", "--porcelain") == ""
    status = run_cli("status", cwd=ready)
    assert "agents: claude (claude-standin-1): 1 proposals (1 failed)" in status.stdout
    assert "cost unknown" in status.stdout


# --------------------------------------------------------------------------- what it cost, shown

def test_status_show_and_report_show_the_agents_and_their_cost(ready):
    from autoresearch.ledger import Attempt

    ledger = Ledger(ready)
    branch = current_branch(ready)
    head = git(ready, "rev-parse", "HEAD")
    exp = ledger.insert(Experiment(branch=branch, parent=head, commit=head, status="keep", val_bpb=1.9,
                                   frontier_bpb=2.0, description="raise MATRIX_LR", agent="claude",
                                   model="claude-sonnet-4-5", input_tokens=3000, output_tokens=200, cost_usd=0.05,
                                   cost_estimated=1, proposal_seconds=12.5, finished_at=time.time()))
    reply = ready / "runs" / "proposals" / "0002.txt"
    reply.parent.mkdir(parents=True)
    reply.write_text("The learning rate looks low for this depth.\nDESCRIPTION: raise MATRIX_LR\n")
    ledger.add_attempt(Attempt(branch=branch, agent="claude", model="claude-sonnet-4-5", input_tokens=1000,
                               output_tokens=10, cost_usd=0.01, cost_estimated=1, seconds=3.0, outcome="transient",
                               error="HTTP 529", reply_path="runs/proposals/0001.txt"))
    ledger.add_attempt(Attempt(branch=branch, experiment_id=exp.id, agent="claude", model="claude-sonnet-4-5",
                               input_tokens=3000, output_tokens=200, cost_usd=0.05, cost_estimated=1, seconds=12.5,
                               outcome="proposed", description="raise MATRIX_LR",
                               reply_path=str(reply.relative_to(ready))))
    ledger.write_tsv()
    ledger.close()

    status = run_cli("status", cwd=ready)
    assert status.returncode == 0, status.stderr
    assert ("agents: claude (claude-sonnet-4-5): 2 proposals (1 failed), 4,000 tokens in / 210 out, "
            "cost ~$0.0600 (estimate)") in status.stdout
    as_json = json.loads(run_cli("status", "--json", cwd=ready).stdout)
    assert as_json["spending"]["cost_usd"] == pytest.approx(0.06) and as_json["spending"]["cost_estimated"]

    show = run_cli("show", str(exp.id), cwd=ready)
    assert show.returncode == 0, show.stderr
    assert "agent        claude    model claude-sonnet-4-5    tokens 3,000 in / 200 out" in show.stdout
    assert "cost ~$0.0500 (estimate)    proposal 12.5 s" in show.stdout
    assert "The learning rate looks low for this depth." in show.stdout   # the proposal's reasoning

    report = run_cli("report", cwd=ready)
    assert report.returncode == 0, report.stderr
    page = (ready / "report" / "report.html").read_text()
    assert 'id="agent-cost"' in page and "~$0.0600 (estimate)" in page
    assert 'id="cost-per-kept"' in page and "~$0.0600 (estimate)</b>1 kept improvement" in page
    assert 'id="spending"' in page and "HTTP 529" in page and "0.0600" in page   # cumulative over time


@pytest.mark.slow
def test_claude_in_the_loop_records_the_served_model_and_no_made_up_cost(ready, tmp_path):
    """Trains once: Claude Code (against the stand-in Messages API) edits train.py, the experiment runs."""
    from test_agents_cli import AnthropicStandIn, lr_line

    old = lr_line(ready)
    server = AnthropicStandIn(ready / "train.py", old, old.replace("0.04", "0.05", 1),
                              "I raised the Muon learning rate.\nDESCRIPTION: raise MATRIX_LR to 0.05")
    try:
        proc = run_cli("loop", "--agent", "claude", "--base-url", server.url, "--model", "claude-standin-1",
                       "--max-experiments", "1", "--rule", "strict", cwd=ready, env=claude_env(tmp_path), timeout=300)
    finally:
        server.close()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    db = sqlite3.connect(ready / ".autoresearch" / "ledger.sqlite")
    db.row_factory = sqlite3.Row
    exp = dict(db.execute("SELECT * FROM experiments WHERE id = 2").fetchone())
    db.close()
    assert (exp["agent"], exp["model"], exp["description"]) == ("claude", "claude-standin-1", "raise MATRIX_LR to 0.05")
    assert exp["cost_usd"] is None and exp["output_tokens"] and exp["status"] in ("keep", "discard"), exp["error_class"] + ": " + exp["error_excerpt"]
    [a] = attempts(ready)
    assert (a["experiment_id"], a["outcome"]) == (2, "proposed")
    assert "I raised the Muon learning rate." in (ready / a["reply_path"]).read_text()
    lines = proc.stdout.splitlines()
    assert any(re.match(r"\d\d:\d\d:\d\d proposal \(claude-standin-1, [\d.]+ s, [\d,]+ tokens in", x) for x in lines)
    assert any(re.match(r"\d\d:\d\d:\d\d #2 (keep|discard) .* :: raise MATRIX_LR to 0.05$", x) for x in lines)
    show = run_cli("show", "2", cwd=ready)
    assert "cost unknown" in show.stdout and "I raised the Muon learning rate." in show.stdout


def test_a_server_that_drops_every_connection_is_named_as_such_before_the_loop(ready):
    with FailingServer("drop") as server:   # its model list too
        server.httpd.RequestHandlerClass.do_GET = server.httpd.RequestHandlerClass.do_POST
        proc = loop(ready, server.url)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    [line] = error_lines(proc.stderr)
    assert "accepted the connection and closed it without an answer" in line and "cannot reach" not in line
    assert attempts(ready) == []
