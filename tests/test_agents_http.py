"""The model-API backends (openai, anthropic) against real local HTTP servers scripted with fixed answers,
and the search/replace edit protocol they share."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from autoresearch import agents
from autoresearch.agents import AgentError, AgentUnavailable, Context, Failure
from autoresearch.agents.anthropic_api import DEFAULT_MODEL, AnthropicAgent
from autoresearch.agents.edits import EDIT_INSTRUCTIONS, apply_edits, apply_file_edits, parse_edits, parse_reply
from autoresearch.agents.openai_compat import OpenAIAgent

TRAIN_PY = '''\
"""A tiny GPT trainer."""
import torch

# ---------------------------------------------------------------------------
# Hyperparameters
DEPTH = 4                 # number of transformer layers
EMBED_LR = 0.3            # learning rate of the embeddings
MATRIX_LR = 0.02          # learning rate of the matrices
WARMUP_RATIO = 0.0        # fraction of the budget spent warming up
WEIGHT_DECAY = 0.0        # AdamW weight decay
# ---------------------------------------------------------------------------


def lr_multiplier(progress):
    if progress < WARMUP_RATIO:
        return progress / WARMUP_RATIO
    return 1.0


def train():
    model = build(DEPTH)
    return model
'''

PROGRAM = "Lower val_bpb. Keep the model small; prefer simple changes."
HISTORY = "#1 keep 1.2345 baseline\n#2 discard 1.2400 double DEPTH"

GOOD_REPLY = """DESCRIPTION: warm up for 5% of the budget and raise MATRIX_LR
<<<<<<< SEARCH
MATRIX_LR = 0.02          # learning rate of the matrices
WARMUP_RATIO = 0.0        # fraction of the budget spent warming up
=======
MATRIX_LR = 0.04          # learning rate of the matrices
WARMUP_RATIO = 0.05       # fraction of the budget spent warming up
>>>>>>> REPLACE
"""
GOOD_RESULT = TRAIN_PY.replace("MATRIX_LR = 0.02 ", "MATRIX_LR = 0.04 ").replace(
    "WARMUP_RATIO = 0.0        #", "WARMUP_RATIO = 0.05       #")


# --------------------------------------------------------------------------- a scripted server

class StubServer:
    """A real HTTP server on 127.0.0.1 answering each request with the next scripted (status, body)."""

    def __init__(self):
        self.script: list[tuple[int, object]] = []
        self.requests: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                stub.requests.append({"method": method, "path": self.path,
                                      "headers": {k.lower(): v for k, v in self.headers.items()},
                                      "json": json.loads(raw) if raw else None})
                status, body = stub.script.pop(0) if stub.script else (599, {"error": "script exhausted"})
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._answer("GET")

            def do_POST(self):
                self._answer("POST")

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    stub = StubServer()
    yield stub
    stub.close()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL",
                 "AUTORESEARCH_MODEL", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def context(tmp_path: Path, failure: Failure | None = None) -> Context:
    return Context(workspace=tmp_path, program=PROGRAM, train_py=TRAIN_PY, history=HISTORY,
                   budget_seconds=300.0, failure=failure)


def openai_answer(text: str, prompt_tokens=1200, completion_tokens=85, finish_reason="stop") -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "model": "served-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


def anthropic_answer(*texts: str, stop_reason="end_turn") -> dict:
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": "served-claude",
            "content": [{"type": "text", "text": t} for t in texts], "stop_reason": stop_reason,
            "usage": {"input_tokens": 2100, "output_tokens": 140}}


def openai_agent(server: StubServer, tmp_path: Path, **kw) -> OpenAIAgent:
    return OpenAIAgent(workspace=tmp_path, model=kw.pop("model", "qwen-coder"), base_url=server.url + "/v1",
                       backoff=0.0, **kw)


def anthropic_agent(server: StubServer, tmp_path: Path, **kw) -> AnthropicAgent:
    return AnthropicAgent(workspace=tmp_path, model=kw.pop("model", None), base_url=server.url, backoff=0.0, **kw)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --------------------------------------------------------------------------- openai backend

def test_openai_sends_the_prompt_and_returns_the_edited_train_py(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-123")
    server.script.append((200, openai_answer(GOOD_REPLY)))
    agent = openai_agent(server, tmp_path, temperature=0.3)
    proposal = agent.propose(context(tmp_path))

    assert proposal.description == "warm up for 5% of the budget and raise MATRIX_LR"
    assert proposal.train_py == GOOD_RESULT
    assert proposal.model == "served-model" and proposal.extra["requested_model"] == "qwen-coder"  # as served
    assert (proposal.input_tokens, proposal.output_tokens) == (1200, 85)
    assert proposal.cost_usd is None and proposal.seconds >= 0

    [req] = server.requests
    assert req["method"] == "POST" and req["path"] == "/v1/chat/completions"
    assert req["headers"]["authorization"] == "Bearer sk-test-123"
    body = req["json"]
    assert body["model"] == "qwen-coder" and body["temperature"] == 0.3
    system, user = body["messages"]
    assert system == {"role": "system", "content": EDIT_INSTRUCTIONS}
    assert user["role"] == "user"
    assert PROGRAM in user["content"] and HISTORY in user["content"]
    assert "MATRIX_LR = 0.02" in user["content"]


def test_openai_without_a_key_sends_no_authorization_and_reads_env(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1/")
    monkeypatch.setenv("AUTORESEARCH_MODEL", "llama3")
    server.script.append((200, openai_answer(GOOD_REPLY)))
    agent = agents.create("openai", tmp_path)
    assert isinstance(agent, OpenAIAgent) and agent.name == "openai"
    agent.backoff = 0.0
    proposal = agent.propose(context(tmp_path))
    assert proposal.train_py == GOOD_RESULT and proposal.extra["requested_model"] == "llama3"
    [req] = server.requests
    assert req["path"] == "/v1/chat/completions"
    assert "authorization" not in req["headers"]
    assert req["json"]["model"] == "llama3" and req["json"]["temperature"] == 0.7


def test_openai_includes_the_failure_in_a_fix_prompt(server, tmp_path):
    server.script.append((200, openai_answer(GOOD_REPLY)))
    failure = Failure(description="bigger LR", status="crash", error_class="nan",
                      log_tail="loss is nan at step 12", diff="-MATRIX_LR = 0.02\n+MATRIX_LR = 2.0")
    openai_agent(server, tmp_path).propose(context(tmp_path, failure))
    user = server.requests[0]["json"]["messages"][1]["content"]
    assert "loss is nan at step 12" in user and "bigger LR" in user


def test_missing_search_text_names_the_block(server, tmp_path):
    reply = GOOD_REPLY + """<<<<<<< SEARCH
LABEL_SMOOTHING = 0.1     # not in this train.py
=======
LABEL_SMOOTHING = 0.0
>>>>>>> REPLACE
"""
    server.script.append((200, openai_answer(reply)))
    with pytest.raises(AgentError) as info:
        openai_agent(server, tmp_path).propose(context(tmp_path))
    message = str(info.value)
    assert "block 2" in message and "LABEL_SMOOTHING = 0.1" in message and "not found" in message


def test_ambiguous_search_text_is_an_error(server, tmp_path):
    reply = """DESCRIPTION: return early
<<<<<<< SEARCH
    return model
=======
    return model  # unchanged
>>>>>>> REPLACE
<<<<<<< SEARCH
# ---------------------------------------------------------------------------
=======
# ===========================================================================
>>>>>>> REPLACE
"""
    server.script.append((200, openai_answer(reply)))
    with pytest.raises(AgentError) as info:
        openai_agent(server, tmp_path).propose(context(tmp_path))
    message = str(info.value)
    assert "block 2" in message and "ambiguous" in message and "2 places" in message


def test_prose_and_fences_around_the_blocks_are_tolerated(server, tmp_path):
    reply = f"""Looking at the history, doubling the depth hurt, so I will try a schedule change instead.

**DESCRIPTION:** warm up for 5% of the budget and raise MATRIX_LR

Here is the edit:

```python
{GOOD_REPLY.split(chr(10), 1)[1]}```

This should help the early steps."""
    server.script.append((200, openai_answer(reply)))
    proposal = openai_agent(server, tmp_path).propose(context(tmp_path))
    assert proposal.description == "warm up for 5% of the budget and raise MATRIX_LR"
    assert proposal.train_py == GOOD_RESULT


def test_a_server_error_is_retried(server, tmp_path):
    server.script += [(500, {"error": "busy"}), (429, {"error": "slow down"}), (200, openai_answer(GOOD_REPLY))]
    proposal = openai_agent(server, tmp_path).propose(context(tmp_path))
    assert proposal.train_py == GOOD_RESULT
    assert len(server.requests) == 3


def test_a_persistent_server_error_is_an_agent_error(server, tmp_path):
    server.script += [(500, {"error": {"message": "model crashed"}})] * 10
    with pytest.raises(AgentError) as info:
        openai_agent(server, tmp_path, retries=3).propose(context(tmp_path))
    assert "500" in str(info.value) and "model crashed" in str(info.value)
    assert len(server.requests) == 4  # the first attempt and 3 retries


def test_a_client_error_is_not_retried(server, tmp_path):
    server.script += [(400, {"error": {"message": "unknown model qwen-coder"}}), (200, openai_answer(GOOD_REPLY))]
    with pytest.raises(AgentError) as info:
        openai_agent(server, tmp_path).propose(context(tmp_path))
    assert "400" in str(info.value) and "unknown model" in str(info.value)
    assert len(server.requests) == 1


def test_a_reply_without_edits_is_an_agent_error(server, tmp_path):
    server.script.append((200, openai_answer("DESCRIPTION: think harder\nI have no edit this time.")))
    with pytest.raises(AgentError, match="no '<<<<<<< SEARCH'"):
        openai_agent(server, tmp_path).propose(context(tmp_path))


def test_a_truncated_reply_says_so(server, tmp_path):
    cut = GOOD_REPLY[: GOOD_REPLY.index("=======")]
    server.script.append((200, openai_answer(cut, finish_reason="length")))
    with pytest.raises(AgentError, match="cut off"):
        openai_agent(server, tmp_path).propose(context(tmp_path))


def test_openai_check_passes_on_a_reachable_server(server, tmp_path):
    server.script.append((404, {"error": "no such route"}))
    openai_agent(server, tmp_path).check()
    assert server.requests[0]["method"] == "GET" and server.requests[0]["path"] == "/v1/models"


def test_openai_check_on_a_closed_port_names_the_url(tmp_path):
    url = closed_port_url() + "/v1"
    agent = OpenAIAgent(workspace=tmp_path, model="m", base_url=url)
    with pytest.raises(AgentUnavailable) as info:
        agent.check()
    assert url + "/models" in str(info.value)


def test_openai_check_without_a_model(server, tmp_path):
    agent = OpenAIAgent(workspace=tmp_path, base_url=server.url + "/v1")
    with pytest.raises(AgentUnavailable, match="AUTORESEARCH_MODEL"):
        agent.check()
    assert server.requests == []


def test_openai_check_needs_a_key_for_api_openai_com(tmp_path):
    agent = OpenAIAgent(workspace=tmp_path, model="gpt-4.1")
    assert agent.base_url == "https://api.openai.com/v1"
    with pytest.raises(AgentUnavailable, match="OPENAI_API_KEY"):
        agent.check()


def test_openai_check_reports_a_rejected_key(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
    server.script.append((401, {"error": {"message": "Incorrect API key"}}))
    with pytest.raises(AgentUnavailable, match="key"):
        openai_agent(server, tmp_path).check()
    assert server.requests[0]["headers"]["authorization"] == "Bearer sk-wrong"


# --------------------------------------------------------------------------- anthropic backend

def test_anthropic_sends_the_prompt_and_returns_the_edited_train_py(server, tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    head, tail = GOOD_REPLY[:40], GOOD_REPLY[40:]
    answer = anthropic_answer(head, tail)
    answer["content"].insert(0, {"type": "thinking", "thinking": "DESCRIPTION: not this one"})
    server.script.append((200, answer))
    proposal = anthropic_agent(server, tmp_path).propose(context(tmp_path))

    assert proposal.description == "warm up for 5% of the budget and raise MATRIX_LR"
    assert proposal.train_py == GOOD_RESULT
    assert proposal.model == "served-claude" and proposal.extra["requested_model"] == DEFAULT_MODEL
    assert (proposal.input_tokens, proposal.output_tokens) == (2100, 140)
    assert proposal.cost_usd is None

    [req] = server.requests
    assert req["method"] == "POST" and req["path"] == "/v1/messages"
    assert req["headers"]["x-api-key"] == "sk-ant-test"
    assert req["headers"]["anthropic-version"] == "2023-06-01"
    assert req["headers"]["content-type"] == "application/json"
    body = req["json"]
    assert body["model"] == DEFAULT_MODEL and body["max_tokens"] == 8192
    assert body["system"] == EDIT_INSTRUCTIONS
    [message] = body["messages"]
    assert message["role"] == "user"
    assert PROGRAM in message["content"] and HISTORY in message["content"]


def test_anthropic_reads_model_and_base_url_from_the_environment(server, tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
    monkeypatch.setenv("AUTORESEARCH_MODEL", "claude-test-model")
    server.script.append((200, anthropic_answer(GOOD_REPLY)))
    agent = agents.create("anthropic", tmp_path)
    assert isinstance(agent, AnthropicAgent) and agent.name == "anthropic"
    assert agent.propose(context(tmp_path)).extra["requested_model"] == "claude-test-model"
    assert server.requests[0]["json"]["model"] == "claude-test-model"


def test_anthropic_retries_then_gives_up(server, tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    server.script += [(529, {"type": "error", "error": {"type": "overloaded_error"}}),
                      (200, anthropic_answer(GOOD_REPLY))]
    assert anthropic_agent(server, tmp_path).propose(context(tmp_path)).train_py == GOOD_RESULT
    assert len(server.requests) == 2

    server.requests.clear()
    server.script += [(500, {"type": "error", "error": {"type": "api_error"}})] * 5
    with pytest.raises(AgentError, match="500"):
        anthropic_agent(server, tmp_path, retries=2).propose(context(tmp_path))
    assert len(server.requests) == 3


def test_anthropic_missing_search_text_is_an_error(server, tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    server.script.append((200, anthropic_answer(GOOD_REPLY.replace("MATRIX_LR = 0.02", "MATRIX_LR = 0.03", 1))))
    with pytest.raises(AgentError, match=r"block 1 of 1: SEARCH starting 'MATRIX_LR = 0.03.*not found"):
        anthropic_agent(server, tmp_path).propose(context(tmp_path))


def test_anthropic_check_needs_a_key(server, tmp_path):
    with pytest.raises(AgentUnavailable, match="ANTHROPIC_API_KEY"):
        anthropic_agent(server, tmp_path).check()
    assert server.requests == []


def test_anthropic_check_probes_models_without_spending_tokens(server, tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    server.script.append((200, {"data": []}))
    anthropic_agent(server, tmp_path).check()
    [req] = server.requests
    assert (req["method"], req["path"]) == ("GET", "/v1/models")
    assert req["headers"]["x-api-key"] == "sk-ant-test"


def test_anthropic_check_reports_a_rejected_key(server, tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-wrong")
    server.script.append((401, {"type": "error", "error": {"type": "authentication_error"}}))
    with pytest.raises(AgentUnavailable, match="key"):
        anthropic_agent(server, tmp_path).check()


def test_anthropic_check_on_a_closed_port_names_the_url(tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    url = closed_port_url()
    with pytest.raises(AgentUnavailable) as info:
        AnthropicAgent(workspace=tmp_path, base_url=url).check()
    assert url + "/v1/models" in str(info.value)


# --------------------------------------------------------------------------- the edit protocol

def test_parse_reply_reads_several_blocks_and_ignores_think_sections():
    reply = ("<think>\nDESCRIPTION: draft idea\n</think>\nDESCRIPTION: two edits\n"
             "<<<<<<< SEARCH\nA = 1\n=======\nA = 2\n>>>>>>> REPLACE\n"
             "and then\n"
             "<<<<<<< SEARCH\nB = 1\n=======\n>>>>>>> REPLACE\n")
    description, blocks = parse_reply(reply)
    assert description == "two edits"
    assert blocks == [("A = 1", "A = 2"), ("B = 1", "")]


@pytest.mark.parametrize("reply, message", [
    ("<<<<<<< SEARCH\nA = 1\n=======\nA = 2\n>>>>>>> REPLACE\n", "no 'DESCRIPTION"),
    ("DESCRIPTION: nothing\n", "no '<<<<<<< SEARCH'"),
    ("", "no 'DESCRIPTION"),
    ("DESCRIPTION: x\n<<<<<<< SEARCH\nA = 1\n=======\nA = 2\n", "block 1: the reply ends"),
    ("DESCRIPTION: x\n<<<<<<< SEARCH\nA = 1\n>>>>>>> REPLACE\n", "block 1: no ======="),
])
def test_parse_reply_rejects_malformed_replies(reply, message):
    with pytest.raises(AgentError, match=message):
        parse_reply(reply)


def test_file_lines_say_which_file_the_blocks_after_them_edit():
    reply = ("DESCRIPTION: two files\n<<<<<<< SEARCH\nA = 1\n=======\nA = 2\n>>>>>>> REPLACE\n"
             "**FILE:** `./src/b.py`\n<<<<<<< SEARCH\nB = 1\n=======\nB = 2\n>>>>>>> REPLACE\n"
             "<<<<<<< SEARCH\nC = 1\n=======\nC = 3\n>>>>>>> REPLACE\n")
    description, blocks = parse_edits(reply)
    assert description == "two files"
    assert blocks == [(None, "A = 1", "A = 2"), ("src/b.py", "B = 1", "B = 2"), ("src/b.py", "C = 1", "C = 3")]
    sources = {"a.py": "A = 1\n", "src/b.py": "B = 1\nC = 1\n", "src/c.py": "D = 1\n"}
    assert apply_file_edits(sources, blocks) == {"a.py": "A = 2\n", "src/b.py": "B = 2\nC = 3\n"}  # only changed
    with pytest.raises(AgentError, match="block 2 of 2 names 'score.py', which is not an editable file"):
        apply_file_edits(sources, [("a.py", "A = 1", "A = 2"), ("score.py", "X", "Y")])
    with pytest.raises(AgentError, match="block 1 of 1: SEARCH starting 'B = 1' was not found in a.py"):
        apply_file_edits(sources, [(None, "B = 1", "B = 2")])


def test_a_reply_for_several_files_is_applied_to_each(server, tmp_path):
    files = {"train.py": TRAIN_PY, "extra.py": "SCALE = 1.0\n"}
    ctx = Context(workspace=tmp_path, program=PROGRAM, train_py=TRAIN_PY, history=HISTORY, budget_seconds=300.0,
                  files=files)
    server.script.append((200, openai_answer(GOOD_REPLY + "FILE: extra.py\n<<<<<<< SEARCH\nSCALE = 1.0\n=======\n"
                                                          "SCALE = 2.0\n>>>>>>> REPLACE\n")))
    proposal = openai_agent(server, tmp_path).propose(ctx)
    assert proposal.files == {"train.py": GOOD_RESULT, "extra.py": "SCALE = 2.0\n"}
    assert proposal.train_py == GOOD_RESULT and proposal.texts("train.py") == proposal.files
    system, user = server.requests[0]["json"]["messages"]
    assert "FILE:" in system["content"] and "train.py, extra.py" in system["content"]
    assert "The current extra.py (the best so far):\n\n```python\nSCALE = 1.0" in user["content"]
    # one file, as a task's context gives it: the prompt of a context without `files`, to the byte
    one = Context(workspace=tmp_path, program=PROGRAM, train_py=TRAIN_PY, history=HISTORY, budget_seconds=300.0,
                  files={"train.py": TRAIN_PY})
    assert one.prompt() == context(tmp_path).prompt()


def test_apply_edits_in_order_with_deletion_and_whitespace_fallback():
    blocks = [
        ("DEPTH = 4                 # number of transformer layers   ", "DEPTH = 6                 # deeper"),
        ("DEPTH = 6                 # deeper\nEMBED_LR = 0.3            # learning rate of the embeddings",
         "DEPTH = 6                 # deeper"),
        ("WEIGHT_DECAY = 0.0        # AdamW weight decay", ""),
    ]
    result = apply_edits(TRAIN_PY, blocks)
    assert "DEPTH = 6                 # deeper\nMATRIX_LR = 0.02" in result
    assert "EMBED_LR" not in result and "WEIGHT_DECAY" not in result
    assert result.endswith("    return model\n")


def test_apply_edits_matches_whole_lines_only():
    # "LR = 0.3" occurs inside "EMBED_LR = 0.3 ..." but is not a line of the file
    with pytest.raises(AgentError, match="not found"):
        apply_edits(TRAIN_PY, [("LR = 0.3", "LR = 0.1")])


def test_apply_edits_that_change_nothing_are_rejected():
    with pytest.raises(AgentError, match="the edits change nothing"):
        apply_edits(TRAIN_PY, [("DEPTH = 4                 # number of transformer layers",
                                "DEPTH = 4                 # number of transformer layers")])


def test_apply_edits_rejects_an_empty_search():
    with pytest.raises(AgentError, match="block 1 of 1: its SEARCH section is empty"):
        apply_edits(TRAIN_PY, [("", "X = 1")])


# --------------------------------------------------------------------------- resolution shared by the backends

def test_endpoint_resolves_the_flag_then_the_environment_then_the_default(monkeypatch):
    from autoresearch.agents.base import Endpoint

    ep = Endpoint(base_url_env="X_BASE_URL", default_base_url="https://default/v1/", key_env="X_KEY",
                  other_credentials=("X_TOKEN",), default_model="m0")
    assert (ep.model(None), ep.base_url(None), ep.key()) == ("m0", "https://default/v1", None)
    monkeypatch.setenv("AUTORESEARCH_MODEL", "m1")
    monkeypatch.setenv("X_BASE_URL", "http://env:1/")
    monkeypatch.setenv("X_KEY", "")                     # empty counts as unset
    assert (ep.model(None), ep.base_url(None), ep.key()) == ("m1", "http://env:1", None)
    assert (ep.model("m2"), ep.base_url("http://flag:2"), ep.key("k2")) == ("m2", "http://flag:2", "k2")
    assert not ep.has_credentials() and Endpoint().base_url(None) is None
    monkeypatch.setenv("X_TOKEN", "t")                  # read when asked, not when the Endpoint was made
    assert ep.has_credentials()
