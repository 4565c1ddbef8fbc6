"""The coding-agent CLI backends (claude, codex) running the REAL CLIs against scripted stand-in model servers
on 127.0.0.1, plus their command lines, output parsing and check() without any CLI; and every backend that
edits (claude, codex, openai) driven by the real `loop` on a user task with two editable files.

The end-to-end tests need the CLIs installed (nothing is installed here): on PATH, or under
$AUTORESEARCH_AGENT_CLIS/node_modules/.bin (default ~/.cache/autoresearch/agent-clis), e.g.

    npm install --prefix ~/.cache/autoresearch/agent-clis @anthropic-ai/claude-code@2.1.330 @openai/codex@0.169.0

and are skipped, saying so, where they are missing. Each CLI runs with its own HOME / CODEX_HOME in a temporary
directory, so no user configuration or login takes part.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import textwrap
import threading
import time
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from autoresearch import agents
from autoresearch.agents import AgentError, AgentUnavailable, Context
from autoresearch.agents.claude_code import ClaudeCodeAgent, parse_result, refusals, usage_of
from autoresearch.agents.cli_tools import description_from
from autoresearch.agents.codex_cli import CodexAgent, filesystem_rules, parse_events
from autoresearch.guard import out_of_scope
from conftest import agent_context, rows, run_cli, table
from test_tasks import USER_TASK
from autoresearch.git import git
from autoresearch.workspace import init_workspace

CLI_CACHE = Path(os.environ.get("AUTORESEARCH_AGENT_CLIS") or "~/.cache/autoresearch/agent-clis").expanduser()
TESTED_WITH = {"claude": "@anthropic-ai/claude-code@2.1.330", "codex": "@openai/codex@0.169.0"}


def installed(name: str) -> str | None:
    import shutil

    found = shutil.which(name)
    if found:
        return found
    local = CLI_CACHE / "node_modules" / ".bin" / name
    return str(local) if os.access(local, os.X_OK) else None


def need(name: str) -> str:
    path = installed(name)
    if path is None:
        pytest.skip(f"the {name} CLI is not installed (not on PATH, not in {CLI_CACHE}/node_modules/.bin): "
                    f"npm install -g {TESTED_WITH[name]}")
    return path


# --------------------------------------------------------------------------- environment and workspace

@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith(("ANTHROPIC_", "CLAUDE_", "OPENAI_", "CODEX_", "AUTORESEARCH_")) or \
                name.lower() in ("http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))                 # Claude Code keeps its state in ~/.claude*
    monkeypatch.setenv("CODEX_HOME", str(tmp_path / "codex-home"))
    (tmp_path / "codex-home").mkdir()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("DISABLE_AUTOUPDATER", "1")
    monkeypatch.setenv("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")


@pytest.fixture
def workspace(tmp_path) -> Path:
    root = tmp_path / "ws"
    init_workspace(root, "cpu", tag="t")
    return root


def context(root: Path) -> Context:
    return agent_context(root, history="#1 keep val_bpb 1.234567 :: baseline")


def lr_line(root: Path) -> str:
    return next(line for line in (root / "train.py").read_text().splitlines() if line.startswith("MATRIX_LR = "))


def head(root: Path) -> str:
    return git(root, "rev-parse", "HEAD")


# --------------------------------------------------------------------------- stand-in servers

class StandIn:
    """A threaded HTTP server on 127.0.0.1; `answer(handler, method, path, body)` is the scripted model."""

    def __init__(self):
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                outer.requests.append({"method": method, "path": self.path, "body": body,
                                       "headers": {k.lower(): v for k, v in self.headers.items()}})
                status, ctype, data = outer.answer(method, self.path, body or {})
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if method != "HEAD":
                    self.wfile.write(data)

            def do_GET(self):
                self._handle("GET")

            def do_HEAD(self):
                self._handle("HEAD")

            def do_POST(self):
                self._handle("POST")

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def answer(self, method: str, path: str, body: dict) -> tuple[int, str, bytes]:
        raise NotImplementedError

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def sse(events: list[dict]) -> bytes:
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()


class AnthropicStandIn(StandIn):
    """The Messages API as Claude Code 2.x uses it (`POST /v1/messages?beta=true`, streamed).

    The agent's conversation (a request offering the file-edit tool) gets, first, one call of that tool on
    `target` replacing `old` with `new`; once a tool_result is in the conversation, the final text `final`.
    Any other call (titles, summaries, small-model helpers) gets a short text; token counting a number."""

    IN, OUT = 1500, 60

    def __init__(self, target: Path, old: str, new: str, final: str):
        super().__init__()
        self.target, self.old, self.new, self.final = target, old, new, final
        self.tool_results: list[dict] = []

    def answer(self, method, path, body):
        if method != "POST":
            return 200, "application/json", b"{}"
        if "count_tokens" in path:
            return 200, "application/json", json.dumps({"input_tokens": 100}).encode()
        if not path.startswith("/v1/messages"):
            return 404, "application/json", json.dumps({"type": "error", "error": {
                "type": "not_found_error", "message": f"stand-in has no {path}"}}).encode()
        tools = {t.get("name"): t for t in body.get("tools") or [] if isinstance(t, dict)}
        edit_tool = self._edit_tool(tools)
        if edit_tool is None:
            blocks = [{"type": "text", "text": "Stand-in helper answer"}]
        else:
            results = [c for m in body.get("messages") or [] if isinstance(m.get("content"), list)
                       for c in m["content"] if isinstance(c, dict) and c.get("type") == "tool_result"]
            if results:
                self.tool_results = results
                blocks = [{"type": "text", "text": self.final}]
            else:
                blocks = [{"type": "tool_use", "id": "toolu_standin_1", "name": edit_tool[0], "input": edit_tool[1]}]
        stop = "tool_use" if blocks[0]["type"] == "tool_use" else "end_turn"
        model = body.get("model") or "stand-in"
        if not body.get("stream"):
            message = {"id": "msg_standin", "type": "message", "role": "assistant", "model": model, "content": blocks,
                       "stop_reason": stop, "stop_sequence": None,
                       "usage": {"input_tokens": self.IN, "output_tokens": self.OUT}}
            return 200, "application/json", json.dumps(message).encode()
        return 200, "text/event-stream", sse(self._stream(blocks, stop, model))

    def _edit_tool(self, tools: dict) -> tuple[str, dict] | None:
        """The file-edit tool the CLI offers, found by its input schema, with our edit as its input."""
        for name, tool in tools.items():
            props = set((tool.get("input_schema") or {}).get("properties") or {})
            if {"file_path", "old_string", "new_string"} <= props:
                return name, {"file_path": str(self.target), "old_string": self.old, "new_string": self.new}
        for name, tool in tools.items():
            props = set((tool.get("input_schema") or {}).get("properties") or {})
            if {"file_path", "content"} <= props:
                text = self.target.read_text().replace(self.old, self.new, 1) if self.target.exists() else self.new
                return name, {"file_path": str(self.target), "content": text}
        return None

    def _stream(self, blocks, stop, model):
        events = [{"type": "message_start", "message": {
            "id": "msg_standin", "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": self.IN, "output_tokens": 1}}}]
        for i, block in enumerate(blocks):
            if block["type"] == "text":
                events.append({"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}})
                events.append({"type": "content_block_delta", "index": i,
                               "delta": {"type": "text_delta", "text": block["text"]}})
            else:
                events.append({"type": "content_block_start", "index": i, "content_block": {
                    "type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}})
                events.append({"type": "content_block_delta", "index": i,
                               "delta": {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}})
            events.append({"type": "content_block_stop", "index": i})
        events.append({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                       "usage": {"output_tokens": self.OUT}})
        events.append({"type": "message_stop"})
        return events

    def conversation_requests(self) -> list[dict]:
        return [r for r in self.requests if r["method"] == "POST" and r["path"].startswith("/v1/messages")
                and "count_tokens" not in r["path"] and self._edit_tool(
                    {t.get("name"): t for t in (r["body"] or {}).get("tools") or []}) is not None]


class ResponsesStandIn(StandIn):
    """The OpenAI Responses API as Codex uses it (`POST /v1/responses`, streamed).

    First answer: a call of Codex's patch tool with `patch` (the `apply_patch` tool if offered as such, else
    through the code-mode `exec` tool, whose JavaScript reaches it as `tools.apply_patch`); once a tool output
    is in the input, the final message `final`."""

    IN, OUT = 1234, 56

    def __init__(self, patch: str, final: str):
        super().__init__()
        self.patch, self.final = patch, final
        self.tool_outputs: list[dict] = []

    def answer(self, method, path, body):
        if method != "POST":
            return 200, "application/json", json.dumps({"object": "list", "data": []}).encode()
        if not path.rstrip("/").endswith("/responses"):
            return 404, "application/json", json.dumps({"error": {"message": f"stand-in has no {path}"}}).encode()
        items = body.get("input") or []
        outputs = [i for i in items if isinstance(i, dict) and str(i.get("type", "")).endswith("_call_output")]
        if outputs:
            self.tool_outputs = outputs
            out = [{"type": "message", "id": "msg_standin", "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "text": self.final, "annotations": []}]}]
        else:
            out = [self._patch_call(body)]
        return 200, "text/event-stream", sse(self._stream(out, body.get("model") or "stand-in"))

    def _patch_call(self, body) -> dict:
        offered = {}

        def collect(tools):
            for t in tools or []:
                if isinstance(t, dict):
                    if t.get("name"):
                        offered.setdefault(t["name"], t)
                    collect(t.get("tools"))

        collect(body.get("tools"))
        for item in body.get("input") or []:
            if isinstance(item, dict) and item.get("type") == "additional_tools":
                collect(item.get("tools"))
        tool = offered.get("apply_patch")
        if tool is not None and tool.get("type") == "function":
            return {"type": "function_call", "id": "fc_standin", "call_id": "call_standin", "name": "apply_patch",
                    "arguments": json.dumps({"input": self.patch}), "status": "completed"}
        if tool is not None:
            return {"type": "custom_tool_call", "id": "ctc_standin", "call_id": "call_standin",
                    "name": "apply_patch", "input": self.patch, "status": "completed"}
        if "exec" in offered:
            script = f"const r = await tools.apply_patch({json.dumps(self.patch)});\ntext(r);\n"
            return {"type": "custom_tool_call", "id": "ctc_standin", "call_id": "call_standin", "name": "exec",
                    "input": script, "status": "completed"}
        # no patch tool of its own (models outside Codex's catalog): Codex intercepts an `apply_patch` heredoc
        # given to its shell tool and applies it as a patch, under the same checks
        shell = next((n for n in ("exec_command", "shell_command", "shell") if n in offered), None)
        assert shell is not None, f"the stand-in found no patch or shell tool among {sorted(offered)}"
        command = f"apply_patch <<'PATCH'\n{self.patch}PATCH\n"
        arguments = {"cmd": command} if shell == "exec_command" else {"command": command}
        return {"type": "function_call", "id": "fc_standin", "call_id": "call_standin", "name": shell,
                "arguments": json.dumps(arguments), "status": "completed"}

    def _stream(self, out, model):
        def ev(kind, **fields):
            return {"type": kind, **fields}

        events = [ev("response.created", response={"id": "resp_standin", "object": "response",
                                                   "status": "in_progress", "model": model, "output": []})]
        for i, item in enumerate(out):
            events.append(ev("response.output_item.added", output_index=i, item=item))
            if item["type"] == "message":
                events.append(ev("response.output_text.delta", output_index=i, content_index=0, item_id=item["id"],
                                 delta=item["content"][0]["text"]))
            events.append(ev("response.output_item.done", output_index=i, item=item))
        events.append(ev("response.completed", response={
            "id": "resp_standin", "object": "response", "status": "completed", "model": model, "output": out,
            "usage": {"input_tokens": self.IN, "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens": self.OUT, "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": self.IN + self.OUT}}))
        return events


@pytest.fixture
def servers():
    started: list[StandIn] = []
    yield started
    for s in started:
        s.close()


# --------------------------------------------------------------------------- claude, end to end

def claude_agent(root: Path, server: AnthropicStandIn, monkeypatch, **kw) -> ClaudeCodeAgent:
    monkeypatch.setenv("AUTORESEARCH_CLAUDE_BIN", need("claude"))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "dummy")
    return ClaudeCodeAgent(workspace=root, base_url=server.url, timeout=60, **kw)


def test_claude_edits_train_py_and_reports_the_description(workspace, servers, monkeypatch):
    old = lr_line(workspace)
    new = old.replace("0.04", "0.05", 1)
    server = AnthropicStandIn(workspace / "train.py", old, new,
                              "I raised the Muon learning rate.\nDESCRIPTION: raise MATRIX_LR to 0.05")
    servers.append(server)
    agent = claude_agent(workspace, server, monkeypatch, model="claude-standin-1")
    agent.check()
    proposal = agent.propose(context(workspace))

    assert proposal.train_py is None
    assert proposal.description == "raise MATRIX_LR to 0.05"
    assert new in (workspace / "train.py").read_text() and old not in (workspace / "train.py").read_text()
    assert git(workspace, "status", "--porcelain") == "M train.py"
    assert proposal.model == "claude-standin-1"
    assert proposal.input_tokens >= 2 * server.IN and proposal.output_tokens >= 2 * server.OUT
    # Claude Code prices the model it asked for at list price; through a server of one's own that says
    # nothing, so no cost is recorded (the estimate is kept, labelled, without a base URL: test_parse_claude_results)
    assert proposal.cost_usd is None and not proposal.cost_estimated
    assert "raise MATRIX_LR" in proposal.reply and proposal.refused == []
    convo = server.conversation_requests()
    assert len(convo) == 2                                     # the edit, then the final answer
    first = convo[0]
    assert first["headers"]["x-api-key"] == "dummy" and first["body"]["model"] == "claude-standin-1"
    assert "DESCRIPTION:" in json.dumps(first["body"]["messages"])  # our instructions reached the model
    assert {t["name"] for t in first["body"]["tools"]} >= {"Edit", "Read", "Write"}
    assert "Bash" not in {t["name"] for t in first["body"]["tools"]}
    assert not server.tool_results[0].get("is_error")


def test_claude_refuses_to_edit_another_file(workspace, servers, monkeypatch):
    program = (workspace / "program.md").read_text()
    old = program.splitlines()[0]
    server = AnthropicStandIn(workspace / "program.md", old, "# rewritten by the agent",
                              "DESCRIPTION: edit the instructions")
    servers.append(server)
    agent = claude_agent(workspace, server, monkeypatch)
    with pytest.raises(AgentError, match="without changing train.py") as info:
        agent.propose(context(workspace))
    # which tool and path were refused is kept and said, so a user can fix program.md
    assert info.value.kind == "reply" and "refused: Edit program.md" in str(info.value)
    assert info.value.spent.refused == ["Edit program.md"] and info.value.spent.output_tokens
    # Claude Code's own permissions refused the edit: nothing changed, and the model was told so
    assert (workspace / "program.md").read_text() == program
    assert git(workspace, "status", "--porcelain") == ""
    [result] = server.tool_results
    assert "denied" in json.dumps(result).lower()


def test_claude_user_settings_cannot_widen_its_permissions(workspace, servers, monkeypatch, tmp_path):
    # a user-level allow rule for every edit would let program.md through, were the settings files read
    settings = tmp_path / "home" / ".claude" / "settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"permissions": {"allow": ["Edit", "Write"], "defaultMode": "acceptEdits"}}))
    program = (workspace / "program.md").read_text()
    server = AnthropicStandIn(workspace / "program.md", program.splitlines()[0], "# rewritten", "DESCRIPTION: x")
    servers.append(server)
    with pytest.raises(AgentError, match="without changing train.py"):
        claude_agent(workspace, server, monkeypatch).propose(context(workspace))
    assert (workspace / "program.md").read_text() == program


def test_claude_api_error_is_an_agent_error(workspace, servers, monkeypatch):
    class Failing(AnthropicStandIn):
        def answer(self, method, path, body):
            if method == "POST" and path.startswith("/v1/messages") and "count_tokens" not in path:
                return 400, "application/json", json.dumps({"type": "error", "error": {
                    "type": "invalid_request_error", "message": "scripted failure: unknown parameter"}}).encode()
            return super().answer(method, path, body)

    server = Failing(workspace / "train.py", "x", "y", "unused")
    servers.append(server)
    with pytest.raises(AgentError, match="scripted failure: unknown parameter") as info:
        claude_agent(workspace, server, monkeypatch).propose(context(workspace))
    assert info.value.kind == "config"  # a 4xx: retrying cannot help
    assert git(workspace, "status", "--porcelain") == ""


# --------------------------------------------------------------------------- codex, end to end

def codex_agent(root: Path, server: ResponsesStandIn, monkeypatch, **kw) -> CodexAgent:
    monkeypatch.setenv("AUTORESEARCH_CODEX_BIN", need("codex"))
    monkeypatch.setenv("OPENAI_API_KEY", "dummy")
    return CodexAgent(workspace=root, base_url=server.url + "/v1", timeout=60, **kw)


def update_patch(path: str, old: str, new: str) -> str:
    return f"*** Begin Patch\n*** Update File: {path}\n@@\n-{old}\n+{new}\n*** End Patch\n"


def test_codex_edits_train_py_and_reports_the_description(workspace, servers, monkeypatch):
    old = lr_line(workspace)
    new = old.replace("0.04", "0.03", 1)
    server = ResponsesStandIn(update_patch("train.py", old, new),
                              "Lowered the matrix learning rate.\n\nDESCRIPTION: lower MATRIX_LR to 0.03")
    servers.append(server)
    agent = codex_agent(workspace, server, monkeypatch, model="gpt-standin")
    agent.check()
    proposal = agent.propose(context(workspace))

    assert proposal.train_py is None
    assert proposal.description == "lower MATRIX_LR to 0.03"
    assert new in (workspace / "train.py").read_text()
    assert git(workspace, "status", "--porcelain") == "M train.py"
    assert proposal.model == "gpt-standin"
    assert (proposal.input_tokens, proposal.output_tokens) == (2 * server.IN, 2 * server.OUT)
    assert proposal.extra["files_changed"] == [str(workspace / "train.py")]
    calls = [r for r in server.requests if r["method"] == "POST"]
    assert len(calls) == 2 and all(r["path"] == "/v1/responses" for r in calls)
    assert calls[0]["headers"]["authorization"] == "Bearer dummy"
    assert calls[0]["body"]["model"] == "gpt-standin"
    assert "DESCRIPTION:" in json.dumps(calls[0]["body"]["input"])
    assert "error" not in json.dumps(server.tool_outputs).lower()


def test_codex_refuses_existing_files_and_the_guard_catches_new_ones(workspace, servers, monkeypatch):
    program = (workspace / "program.md").read_text()
    frontier = head(workspace)
    server = ResponsesStandIn(update_patch("program.md", program.splitlines()[0], "# rewritten by the agent"),
                              "DESCRIPTION: edit the instructions")
    servers.append(server)
    agent = codex_agent(workspace, server, monkeypatch)
    with pytest.raises(AgentError, match="without changing train.py"):
        agent.propose(context(workspace))
    # the run's permission profile makes every existing file but train.py read-only: the patch was refused
    assert (workspace / "program.md").read_text() == program
    assert "rejected" in json.dumps(server.tool_outputs)
    assert git(workspace, "status", "--porcelain") == ""

    # Codex cannot be confined to one file (a writable root must be a directory), so it CAN create a new
    # file; the harness guard is the real enforcement: out_of_scope flags it and the run would be rejected.
    server2 = ResponsesStandIn("*** Begin Patch\n*** Add File: notes.md\n+my notes\n*** End Patch\n",
                               "DESCRIPTION: keep notes")
    servers.append(server2)
    proposal = codex_agent(workspace, server2, monkeypatch).propose(context(workspace))
    assert (workspace / "notes.md").read_text() == "my notes\n"
    assert proposal.description == "keep notes"
    assert out_of_scope(workspace, frontier) == ["notes.md"]


def test_codex_api_error_is_an_agent_error(workspace, servers, monkeypatch):
    class Failing(ResponsesStandIn):
        def answer(self, method, path, body):
            return 400, "application/json", json.dumps({"error": {
                "message": "scripted failure: no such model", "type": "invalid_request_error"}}).encode()

    server = Failing("", "")
    servers.append(server)
    with pytest.raises(AgentError, match="scripted failure: no such model"):
        codex_agent(workspace, server, monkeypatch).propose(context(workspace))


# --------------------------------------------------------------------------- check(), no CLI needed

def fake_cli(tmp_path: Path, name: str, script: str = "exit 0") -> Path:
    path = tmp_path / "bin" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.mark.parametrize("name, cls, key, hint", [
    ("claude", ClaudeCodeAgent, "ANTHROPIC_API_KEY", "npm install -g @anthropic-ai/claude-code"),
    ("codex", CodexAgent, "OPENAI_API_KEY", "npm install -g @openai/codex"),
])
def test_check_without_the_executable_says_how_to_install_it(name, cls, key, hint, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv(key, "k")
    with pytest.raises(AgentUnavailable) as info:
        agents.create(name, tmp_path).check()
    assert hint in str(info.value) and f"`{name}` is not on PATH" in str(info.value)
    env = f"AUTORESEARCH_{name.upper()}_BIN"
    monkeypatch.setenv(env, str(tmp_path / "nowhere" / name))
    with pytest.raises(AgentUnavailable, match=env):
        cls(workspace=tmp_path).check()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_claude_check_needs_a_key_and_a_reachable_base_url(tmp_path, monkeypatch, servers):
    monkeypatch.setenv("AUTORESEARCH_CLAUDE_BIN", str(fake_cli(tmp_path, "claude")))
    agent = agents.create("claude", tmp_path)
    assert isinstance(agent, ClaudeCodeAgent) and agent.name == "claude"
    with pytest.raises(AgentUnavailable, match="ANTHROPIC_API_KEY"):
        agent.check()
    monkeypatch.setenv("ANTHROPIC_AUTH_TOKEN", "t")
    agent.check()                                       # no base URL of one's own: nothing to probe
    closed = closed_port_url()
    with pytest.raises(AgentUnavailable, match=re.escape(closed + "/v1/models")):
        ClaudeCodeAgent(workspace=tmp_path, base_url=closed).check()
    server = AnthropicStandIn(tmp_path / "train.py", "", "", "")
    servers.append(server)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
    agents.create("claude", tmp_path).check()
    assert [(r["method"], r["path"]) for r in server.requests] == [("GET", "/v1/models")]


def test_codex_check_needs_a_key_a_login_or_a_reachable_base_url(tmp_path, monkeypatch, servers):
    monkeypatch.setenv("PATH", str(fake_cli(tmp_path, "codex").parent))
    agent = agents.create("codex", tmp_path)
    assert isinstance(agent, CodexAgent) and agent.name == "codex"
    with pytest.raises(AgentUnavailable, match="OPENAI_API_KEY"):
        agent.check()
    (tmp_path / "codex-home" / "auth.json").write_text("{}")   # `codex login`
    agent.check()
    (tmp_path / "codex-home" / "auth.json").unlink()
    (tmp_path / "codex-home" / "config.toml").write_text('model_provider = "ollama"\n')
    agent.check()
    (tmp_path / "codex-home" / "config.toml").unlink()
    # a base URL must answer: Codex itself would wait for it indefinitely
    closed = closed_port_url() + "/v1"
    with pytest.raises(AgentUnavailable, match=re.escape(closed + "/models")):
        CodexAgent(workspace=tmp_path, base_url=closed).check()
    server = ResponsesStandIn("", "")
    servers.append(server)
    CodexAgent(workspace=tmp_path, base_url=server.url + "/v1").check()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    agent.check()


# --------------------------------------------------------------------------- command lines and parsing

def test_claude_command_line_restricts_it_to_train_py(tmp_path):
    cmd = ClaudeCodeAgent(workspace=tmp_path, model="opus").command("/bin/claude")
    assert cmd[:4] == ["/bin/claude", "-p", "--output-format", "json"]
    assert "--restricted" in cmd and "--tools=Read,Edit,Write" in cmd and "--disallowedTools=Bash" in cmd
    assert "--allowedTools=Read(./train.py),Edit(./train.py),Write(./train.py)" in cmd
    assert cmd[cmd.index("--permission-mode") + 1] == "dontAsk"
    assert cmd[cmd.index("--model") + 1] == "opus"
    assert "--model" not in ClaudeCodeAgent(workspace=tmp_path).command("claude")
    env = ClaudeCodeAgent(workspace=tmp_path, base_url="http://gw:8080/").environment()
    assert env["ANTHROPIC_BASE_URL"] == "http://gw:8080"


def test_codex_command_line_and_permission_profile(workspace, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    cmd = CodexAgent(workspace=workspace, model="gpt-x", base_url="http://127.0.0.1:8000/v1/").command("codex",
                                                                                                     workspace)
    assert cmd[:3] == ["codex", "exec", "--json"] and cmd[-1] == "-"
    overrides = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-c"]
    assert 'approval_policy="never"' in overrides and 'default_permissions="autoresearch"' in overrides
    assert 'model_provider="autoresearch"' in overrides
    [provider] = [o for o in overrides if o.startswith("model_providers.autoresearch=")]
    assert '"base_url" = "http://127.0.0.1:8000/v1"' in provider and '"env_key" = "OPENAI_API_KEY"' in provider
    assert cmd[cmd.index("-m") + 1] == "gpt-x"
    rules = filesystem_rules(workspace)
    assert rules.startswith('{":root" = "read", ":workspace_roots" = {"." = "write", ')
    for entry in (".git", ".gitignore", "autoresearch.toml", "program.md"):
        assert f'"{entry}" = "read"' in rules
    assert "train.py" not in rules
    plain = CodexAgent(workspace=workspace).command("codex", workspace)
    assert "-m" not in plain and not any(a.startswith("model_provider") for a in plain)


# Recorded from claude 2.1.330 (`-p --output-format json`), shortened.
CLAUDE_OK = json.dumps({
    "type": "result", "subtype": "success", "is_error": False, "num_turns": 2, "session_id": "d822",
    "result": "Edited.\n**DESCRIPTION:** scripted change", "total_cost_usd": 0.0016, "permission_denials": [],
    "usage": {"input_tokens": 200, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
              "output_tokens": 40},
    "modelUsage": {"claude-opus-5-5": {"inputTokens": 200, "outputTokens": 40, "cacheReadInputTokens": 10,
                                       "cacheCreationInputTokens": 5, "costUSD": 0.0015},
                   "claude-haiku-5": {"inputTokens": 30, "outputTokens": 3, "cacheReadInputTokens": 0,
                                      "cacheCreationInputTokens": 0, "costUSD": 0.0001}}})
CLAUDE_API_ERROR = json.dumps({
    "type": "result", "subtype": "success", "is_error": True, "api_error_status": 400, "num_turns": 1,
    "result": "API Error: 400 scripted failure: prompt too long", "total_cost_usd": 0, "modelUsage": {}})

# Recorded from codex-cli 0.169.0 (`exec --json`).
CODEX_OK = """\
{"type":"thread.started","thread_id":"01a201ed-ba7c"}
{"type":"turn.started"}
{"type":"item.started","item":{"id":"item_0","type":"file_change","changes":[{"path":"/w/train.py","kind":"update"}],"status":"in_progress"}}
{"type":"item.completed","item":{"id":"item_0","type":"file_change","changes":[{"path":"/w/train.py","kind":"update"}],"status":"completed"}}
{"type":"item.completed","item":{"id":"item_1","type":"agent_message","text":"hi\\nDESCRIPTION: nothing much"}}
{"type":"turn.completed","usage":{"input_tokens":2468,"cached_input_tokens":0,"output_tokens":112,"reasoning_output_tokens":0}}
"""
CODEX_FAILED = """\
{"type":"thread.started","thread_id":"01a201ef"}
{"type":"turn.started"}
{"type":"error","message":"scripted failure: bad model"}
{"type":"turn.failed","error":{"message":"scripted failure: bad model"}}
"""


def test_parse_claude_results():
    result = parse_result("some log line\n" + CLAUDE_OK + "\n")
    assert description_from(result["result"]) == "scripted change"
    assert usage_of(result) == (245, 43, "claude-opus-5-5")
    result = parse_result(CLAUDE_API_ERROR)
    assert result["is_error"] and "prompt too long" in result["result"]
    assert parse_result("not json at all") is None
    assert usage_of({"usage": {"input_tokens": 7, "output_tokens": 2}}) == (7, 2, None)
    # Claude Code's cost is its own list-price estimate: kept as such talking to Anthropic, dropped through
    # a base URL of one's own (a proxy or another server: the list price says nothing there)
    ok = parse_result(CLAUDE_OK)
    assert ClaudeCodeAgent().cost_of(ok) == 0.0016
    assert ClaudeCodeAgent(base_url="http://127.0.0.1:9/").cost_of(ok) is None
    denied = {"permission_denials": [{"tool_name": "Write", "tool_use_id": "t1",
                                      "tool_input": {"file_path": "/w/notes.txt", "content": "x"}},
                                     {"tool_name": "Edit", "tool_input": {"file_path": "../elsewhere.py"}}]}
    assert refusals(denied, Path("/w")) == ["Write notes.txt", "Edit ../elsewhere.py"]


def test_parse_codex_events():
    ev = parse_events("WARNING: something\n" + CODEX_OK)
    assert ev.message.endswith("DESCRIPTION: nothing much") and ev.failure is None
    assert (ev.input_tokens, ev.output_tokens, ev.thread_id) == (2468, 112, "01a201ed-ba7c")
    assert ev.files_changed == {"/w/train.py"}
    failed = parse_events(CODEX_FAILED)
    assert failed.failure == "scripted failure: bad model" and failed.message is None


@pytest.mark.parametrize("text, expected", [
    ("I changed it.\nDESCRIPTION: raise the LR", "raise the LR"),
    ("DESCRIPTION: first idea\nthen...\n**DESCRIPTION:** final idea  ", "final idea"),
    ("- description: lower-case works too", "lower-case works too"),
    ("## Warmup for the first 5%\nmore text", "Warmup for the first 5%"),
    ("", "(no description)"),
    ("x" * 500, "x" * 197 + "..."),
])
def test_description_from(text, expected):
    assert description_from(text) == expected



# --------------------------------------------------------------------------- failures of the CLI itself (fake CLIs)

def test_a_cli_that_hangs_is_stopped_with_its_children(workspace, tmp_path, monkeypatch):
    pidfile = tmp_path / "child.pid"
    cli = fake_cli(tmp_path, "claude", f"sleep 60 & echo $! > {pidfile}\nwait")
    agent = ClaudeCodeAgent(workspace=workspace, timeout=1.0, executable=str(cli))
    started = time.monotonic()
    with pytest.raises(AgentError, match="did not finish within 1 s"):
        agent.propose(context(workspace))
    assert time.monotonic() - started < 15
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and Path(f"/proc/{child}").exists() and \
            Path(f"/proc/{child}/stat").read_text().split()[2] != "Z":
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists() or Path(f"/proc/{child}/stat").read_text().split()[2] == "Z"


@pytest.mark.parametrize("name, cls", [("claude", ClaudeCodeAgent), ("codex", CodexAgent)])
def test_a_cli_that_fails_without_output_reports_its_stderr(name, cls, workspace, tmp_path):
    cli = fake_cli(tmp_path, name, "echo 'Error: unknown option --frobnicate' >&2\nexit 2")
    with pytest.raises(AgentError) as info:
        cls(workspace=workspace, executable=str(cli)).propose(context(workspace))
    assert "unknown option --frobnicate" in str(info.value) and "exit 2" in str(info.value)


# --------------------------------------------------------------------------- every backend on a task of two files

TWO_FILES = {
    "task.toml": """\
        name = "guess2"
        description = "put (X + OFFSET) * SCALE close to the hidden target"
        editable = ["guess.py", "src/step.py"]
        readable = ["src/scale.py"]
        run = "python guess.py"
        evaluate = "python score.py"
        metric = "closeness"
        direction = "maximize"
        rule = "strict"
        budget = 10
        """,
    "guess.py": """\
        import json, os, sys
        sys.dont_write_bytecode = True
        sys.path.insert(0, "src")
        from scale import SCALE
        from step import OFFSET

        X = 2.0

        with open(os.path.join(os.environ["AUTORESEARCH_RUN_DIR"], "answer.json"), "w") as f:
            json.dump({"x": (X + OFFSET) * SCALE}, f)
        """,
    "src/step.py": """\
        # @autoresearch:hyperparameters-begin
        OFFSET = 1.0
        # @autoresearch:hyperparameters-end
        """,
    "src/scale.py": "SCALE = 1.0\n",
    "score.py": USER_TASK["score.py"],   # the README's evaluator
}


@pytest.fixture
def task_lab(tmp_path, monkeypatch) -> Path:
    """A user task whose editable files are guess.py and src/step.py (src/scale.py readable, score.py its
    frozen evaluator; only src/step.py has a hyperparameter block): initialised, prepared and its baseline
    run (x = 3, closeness -16), through the real CLI."""
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "twofiles"
    for name, text in TWO_FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(textwrap.dedent(text))
    lab = tmp_path / "lab"
    for args, cwd in ((("init", str(lab), "--task", str(folder), "--tag", "t"), tmp_path), (("prepare",), lab),
                      (("run", "-m", "baseline"), lab)):
        done = run_cli(*args, cwd=cwd)
        assert done.returncode == 0, done.stdout + done.stderr
    return lab


def one_proposal(lab: Path, agent: str, *options: str):
    """`autoresearch loop` for one experiment; a failed proposal stops it at once (exit 3)."""
    return run_cli("loop", "--agent", agent, "--max-experiments", "1", "--max-failures", "1", "--backoff", "0",
                   "--request-timeout", "120", *options, cwd=lab)


def committed(lab: Path) -> list[str]:
    return git(lab, "show", "--name-only", "--format=", "HEAD").split()


def refused_proposal(lab: Path, done, frontier: str, experiments: int) -> dict:
    """The loop stopped on a reply error, recorded it, and left no commit, no experiment and a clean tree."""
    assert done.returncode == 3, done.stdout + done.stderr
    assert head(lab) == frontier and len(rows(lab)) == experiments
    assert git(lab, "status", "--porcelain") == ""
    last = table(lab, "proposals")[-1]
    assert last["outcome"] == "reply" and last["experiment_id"] is None
    return last


def test_claude_on_a_task_edits_its_second_file_and_never_the_evaluator(task_lab, servers, monkeypatch):
    lab = task_lab
    monkeypatch.setenv("AUTORESEARCH_CLAUDE_BIN", need("claude"))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "dummy")
    rules = "Read(./{0}),Edit(./{0}),Write(./{0})"
    assert (f"--allowedTools={rules.format('guess.py')},{rules.format('src/step.py')},Read(./src/scale.py)"
            in ClaudeCodeAgent(workspace=lab).command("claude"))

    server = AnthropicStandIn(lab / "src" / "step.py", "OFFSET = 1.0", "OFFSET = 3.0", "DESCRIPTION: step by 2")
    servers.append(server)
    done = one_proposal(lab, "claude", "--base-url", server.url)
    assert done.returncode == 0, done.stdout + done.stderr
    kept = rows(lab)[-1]
    assert (kept["status"], kept["agent"], kept["description"]) == ("keep", "claude", "step by 2")
    assert kept["val_bpb"] == pytest.approx(-4.0) and committed(lab) == ["src/step.py"]
    # the prompt shows both files and names the task's metric, not the GPT task's
    asked = json.dumps(server.conversation_requests()[0]["body"]["messages"])
    assert "The current src/step.py" in asked and "The current guess.py" in asked
    assert "make closeness higher (maximize)" in asked and "Edit guess.py, src/step.py only" in asked
    assert not server.tool_results[0].get("is_error")

    server = AnthropicStandIn(lab / "src" / "step.py", "OFFSET = 3.0", "OFFSET = -9.0", "DESCRIPTION: overshoot")
    servers.append(server)
    done = one_proposal(lab, "claude", "--base-url", server.url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert rows(lab)[-1]["status"] == "discard" and committed(lab) == ["src/step.py"]
    assert "OFFSET = 3.0" in (lab / "src" / "step.py").read_text() and git(lab, "status", "--porcelain") == ""

    # the frozen evaluator: Claude Code's own permissions refuse the edit, nothing runs or is committed
    evaluator = (lab / "score.py").read_text()
    server = AnthropicStandIn(lab / "score.py", evaluator.splitlines()[0], "# I grade myself", "DESCRIPTION: x")
    servers.append(server)
    frontier = head(lab)
    last = refused_proposal(lab, one_proposal(lab, "claude", "--base-url", server.url), frontier, 3)
    assert "Edit score.py" in last["refused"] and "without changing guess.py or src/step.py" in last["error"]
    assert (lab / "score.py").read_text() == evaluator


def test_codex_on_a_task_writes_only_its_editable_files(task_lab, servers, monkeypatch, tmp_path):
    lab = task_lab
    seen = tmp_path / "codex-args"
    wrapper = fake_cli(tmp_path, "codex", f'printf "%s\\n" "$@" > {seen}\nexec {need("codex")} "$@"')
    monkeypatch.setenv("AUTORESEARCH_CODEX_BIN", str(wrapper))
    monkeypatch.setenv("OPENAI_API_KEY", "dummy")
    server = ResponsesStandIn(update_patch("src/step.py", "OFFSET = 1.0", "OFFSET = 3.0"), "DESCRIPTION: step by 2")
    servers.append(server)
    done = one_proposal(lab, "codex", "--base-url", server.url + "/v1")
    assert done.returncode == 0, done.stdout + done.stderr
    kept = rows(lab)[-1]
    assert (kept["status"], kept["agent"], kept["description"]) == ("keep", "codex", "step by 2")
    assert committed(lab) == ["src/step.py"]

    # the permission profile it was given: everything read-only but the editable files, inside src/ too
    [given] = [a for a in seen.read_text().splitlines() if a.startswith("permissions.autoresearch.filesystem=")]
    rules = tomllib.loads("t = " + given.split("=", 1)[1])["t"][":workspace_roots"]
    assert rules["."] == "write"
    for frozen in ("score.py", "task.toml", "program.md", ".git", "src/scale.py"):
        assert rules[frozen] == "read", frozen
    assert not {"guess.py", "src", "src/step.py"} & set(rules)

    # so its patch of the read-only file beside the editable one in src/ is refused by Codex itself
    server = ResponsesStandIn(update_patch("src/scale.py", "SCALE = 1.0", "SCALE = 1.4"), "DESCRIPTION: rescale")
    servers.append(server)
    frontier = head(lab)
    refused_proposal(lab, one_proposal(lab, "codex", "--base-url", server.url + "/v1"), frontier, 2)
    assert (lab / "src" / "scale.py").read_text() == "SCALE = 1.0\n"
    assert "rejected" in json.dumps(server.tool_outputs)


class ChatStandIn(StandIn):
    """An OpenAI-compatible chat endpoint whose every answer is `reply`."""

    def __init__(self, reply: str):
        super().__init__()
        self.reply = reply

    def answer(self, method, path, body):
        if method != "POST":
            return 200, "application/json", json.dumps({"object": "list", "data": []}).encode()
        return 200, "application/json", json.dumps({
            "id": "chatcmpl-standin", "object": "chat.completion", "model": "chat-standin",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": self.reply}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 300, "completion_tokens": 40}}).encode()

    def conversation(self) -> list[dict]:
        return [r["body"]["messages"] for r in self.requests if r["method"] == "POST"]


def block(file: str, old: str, new: str) -> str:
    return f"FILE: {file}\n<<<<<<< SEARCH\n{old}\n=======\n{new}\n>>>>>>> REPLACE\n"


def test_openai_on_a_task_edits_both_files_in_one_commit_and_never_a_frozen_one(task_lab, servers):
    lab = task_lab
    server = ChatStandIn("DESCRIPTION: guess 3, step 2\n" + block("guess.py", "X = 2.0", "X = 3.0")
                         + block("./src/step.py", "OFFSET = 1.0", "OFFSET = 2.0"))
    servers.append(server)
    done = one_proposal(lab, "openai", "--base-url", server.url + "/v1", "--model", "m")
    assert done.returncode == 0, done.stdout + done.stderr
    kept = rows(lab)[-1]
    assert (kept["status"], kept["agent"], kept["description"]) == ("keep", "openai", "guess 3, step 2")
    assert kept["val_bpb"] == pytest.approx(-4.0) and committed(lab) == ["guess.py", "src/step.py"]
    [(system, user)] = server.conversation()
    assert "FILE:" in system["content"] and "guess.py, src/step.py" in system["content"]
    assert "The current guess.py" in user["content"] and "The current src/step.py" in user["content"]

    # a block for the evaluator spoils the whole reply: nothing applied, nothing committed
    evaluator = (lab / "score.py").read_text()
    server = ChatStandIn("DESCRIPTION: grade myself\n" + block("guess.py", "X = 3.0", "X = 4.0")
                         + block("score.py", evaluator.splitlines()[0], "import json, os  # mine"))
    servers.append(server)
    frontier = head(lab)
    last = refused_proposal(lab, one_proposal(lab, "openai", "--base-url", server.url + "/v1", "--model", "m"),
                            frontier, 2)
    assert "'score.py', which is not an editable file" in last["error"]
    assert (lab / "score.py").read_text() == evaluator and "X = 3.0" in (lab / "guess.py").read_text()


def test_optuna_on_a_task_tunes_the_first_file_with_a_hyperparameter_block(task_lab):
    lab = task_lab
    done = one_proposal(lab, "optuna")
    assert done.returncode == 0, done.stdout + done.stderr
    tried = rows(lab)[-1]
    assert tried["agent"] == "optuna" and tried["description"].startswith("optuna: OFFSET 1 -> ")
    assert git(lab, "show", "--name-only", "--format=", tried["commit"]).split() == ["src/step.py"]
