"""The built-in `prompt` task (autoresearch/tasks/prompt) end to end through the real CLI, against a scripted
loopback stand-in for its grader: an OpenAI-compatible server on 127.0.0.1 (a real HTTP server in a
thread) that answers each question right and with the bare number only when the system prompt asks for
"only the number" (bare arithmetic it always answers bare), so the metric depends on the prompt. The same
server answers the openai agent's request with an edit of prompt.txt, so `loop` improves the prompt.

Also: without the grader's variables `run`, `noise` and `loop` stop with exit 2 and change nothing; a grader
that is down or answers garbage is a broken task (nothing recorded), never a bad candidate; the run has no
network, no hidden answers and none of the grader's variables (a task variant whose run step tries), and the
evaluator's network is given by task.toml's evaluate_network and nothing else."""

from __future__ import annotations

import json
import shutil
import socket
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import git, rows, run_cli

from autoresearch import sandbox
from autoresearch import task as tasks

needs_sandbox = pytest.mark.skipif(sandbox.probe() != "", reason=f"no sandbox here: {sandbox.probe()}")
BASELINE_LINE = "You are a helpful assistant. Read the user's question carefully and solve it."
BARE = "Reply with only the number, nothing else."


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(path))
    monkeypatch.delenv("AUTORESEARCH_WORKSPACE", raising=False)
    for name in ("AUTORESEARCH_GRADER_BASE_URL", "AUTORESEARCH_GRADER_MODEL", "AUTORESEARCH_GRADER_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    return path


def ok(done) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def new_lab(tmp_path: Path, task: str = "prompt") -> Path:
    """init + prepare: neither needs the grader."""
    lab = tmp_path / "lab"
    ok(run_cli("init", str(lab), "--task", task, "--tag", "t", cwd=tmp_path))
    ok(run_cli("prepare", cwd=lab))
    return lab


def answers(cache: Path) -> dict[str, str]:
    """Every prepared question and its answer (the stand-in grader knows them all)."""
    found = {}
    for path in cache.glob("tasks/*/*/*.jsonl"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            found[row["question"]] = row["answer"]
    assert len(found) == 85
    return found


# ---------------------------------------------------------------------------
# The stand-in: grader and agent behind one OpenAI-compatible endpoint

class StandIn:
    """POST /v1/chat/completions: a known question is graded (see the module's docstring); anything else
    is the agent's request, answered with a SEARCH/REPLACE edit of prompt.txt. GET /v1/models lists one
    model. `mode` "garbage" answers every request with text that is not JSON."""

    def __init__(self, known: dict[str, str], mode: str = "ok"):
        self.known, self.mode = known, mode
        self.graded, self.proposals, self.headers = [], [], []

    def reply_to(self, body: dict) -> str:
        system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
        if user not in self.known:
            self.proposals.append(body)
            return (f"Ask for the bare number.\nDESCRIPTION: ask for only the number\n<<<<<<< SEARCH\n"
                    f"{BASELINE_LINE}\n=======\n{BASELINE_LINE}\n{BARE}\n>>>>>>> REPLACE\n")
        self.graded.append(body)
        answer = self.known[user]
        if "only the number" in system.lower() or user.startswith("What is"):
            return answer
        return f"Let me work it out step by step. The answer is {answer}."

    def __enter__(self):
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, data: bytes):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(json.dumps({"data": [{"id": "scripted"}]}).encode())

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stand_in.headers.append(dict(self.headers))
                if stand_in.mode == "garbage":
                    return self._send(b"<html>a proxy error page</html>")
                text = stand_in.reply_to(body)
                self._send(json.dumps({"choices": [{"message": {"role": "assistant", "content": text},
                                                    "finish_reason": "stop"}],
                                       "usage": {"prompt_tokens": 100, "completion_tokens": 10},
                                       "model": body["model"]}).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def env(self, key: str = "", host: str = "127.0.0.1") -> dict:
        """The grader's variables; host "localhost" has the evaluator resolve the name (/etc/hosts)."""
        return {"AUTORESEARCH_GRADER_BASE_URL": self.url.replace("127.0.0.1", host),
                "AUTORESEARCH_GRADER_MODEL": "grader",
                **({"AUTORESEARCH_GRADER_API_KEY": key} if key else {})}


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def unchanged(lab: Path, head: str, tree: str) -> None:
    assert git(lab, "rev-parse", "HEAD") == head and git(lab, "status", "--porcelain") == tree
    assert not (lab / ".autoresearch" / "ledger.sqlite").exists() or rows(lab) == []
    assert not (lab / ".autoresearch" / "current.json").exists()


# ---------------------------------------------------------------------------
# The task, end to end

def test_prompt_task_run_then_a_better_prompt_is_kept(cache, tmp_path):
    lab = new_lab(tmp_path)
    assert (lab / "prompt.txt").read_text().strip() == BASELINE_LINE
    with StandIn(answers(cache)) as grader:
        out = ok(run_cli("run", "-m", "baseline", cwd=lab, env=grader.env(key="sk-test")))
        assert out.startswith("keep") and "accuracy 0.350000" in out, out   # 14 of 40 are bare arithmetic
        first = rows(lab)[0]
        assert first["val_bpb"] == pytest.approx(0.35) and first["test_bpb"] == pytest.approx(14 / 40)
        assert "correct 14" in first["reason"] and "bare 14" in first["reason"]
        assert first["sandbox"] == ("bwrap" if sandbox.probe() == "" else "none")
        assert len(grader.graded) == 80 and not grader.proposals      # the val and the test split, once each
        body = grader.graded[0]
        assert body["temperature"] == 0 and body["model"] == "grader"
        assert body["messages"][0] == {"role": "system", "content": BASELINE_LINE + "\n"}
        assert all(h.get("Authorization") == "Bearer sk-test" for h in grader.headers)
        assert (lab / "runs" / "0001" / "prompt.txt").read_text().strip() == BASELINE_LINE   # the run's copy
        assert "prompt_chars:" in (lab / "runs" / "0001.log").read_text()

        (lab / "prompt.txt").write_text(f"{BASELINE_LINE}\n{BARE}\n")
        out = ok(run_cli("run", "-m", "ask for the bare number", cwd=lab, env=grader.env()))
        assert out.startswith("keep") and "accuracy 1.000000" in out and "+0.650000" in out, out
        assert all("Authorization" not in h for h in grader.headers[80:])   # no key set: none sent

        (lab / "prompt.txt").write_text("Answer in full sentences.\n")
        out = ok(run_cli("run", "-m", "full sentences", cwd=lab, env=grader.env()))
        assert out.startswith("discard"), out
    ledger = rows(lab)
    assert [r["status"] for r in ledger] == ["keep", "keep", "discard"]
    assert ledger[1]["test_bpb"] == pytest.approx(1.0) and ledger[2]["test_bpb"] is None
    assert BARE in (lab / "prompt.txt").read_text() and git(lab, "status", "--porcelain") == ""
    shown = ok(run_cli("show", "2", cwd=lab))
    assert "accuracy" in shown and "diff of prompt.txt" in shown and f"+{BARE}" in shown


def test_prompt_loop_with_the_openai_agent_keeps_the_better_prompt(cache, tmp_path):
    lab = new_lab(tmp_path)
    with StandIn(answers(cache)) as server:
        done = run_cli("loop", "--max-experiments", "3", "--agent", "openai", "--base-url", server.url,
                       "--model", "scripted", cwd=lab, env=server.env(host="localhost"))
        ok(done)
    ledger = rows(lab)
    assert [(r["description"], r["status"]) for r in ledger] == [
        ("baseline", "keep"), ("ask for only the number", "keep"), ("ask for only the number", "discard")]
    assert ledger[1]["val_bpb"] == pytest.approx(1.0) and ledger[1]["agent"] == "openai"
    assert ledger[1]["model"] == "scripted"
    assert BARE in git(lab, "show", f"{ledger[1]['commit']}:prompt.txt")
    assert (lab / "prompt.txt").read_text() == f"{BASELINE_LINE}\n{BARE}\n" and git(lab, "status", "--porcelain") == ""
    request = server.proposals[0]
    assert "prompt.txt" in request["messages"][0]["content"] and "train.py" not in request["messages"][0]["content"]
    assert BASELINE_LINE in request["messages"][-1]["content"]          # the frontier's prompt.txt
    assert "bare number" in request["messages"][-1]["content"]           # program.md


# ---------------------------------------------------------------------------
# No grader, a grader that is down, a grader that answers garbage

def test_without_the_grader_variables_nothing_runs(cache, tmp_path):
    listed = ok(run_cli("tasks", cwd=tmp_path, env={"COLUMNS": "200"}))
    assert "prompt" in listed and "AUTORESEARCH_GRADER_BASE_URL" in listed and "accuracy" in listed
    init = run_cli("init", str(tmp_path / "lab"), "--task", "prompt", "--tag", "t", cwd=tmp_path)
    assert init.returncode == 0 and "AUTORESEARCH_GRADER_BASE_URL" in init.stderr
    lab = tmp_path / "lab"
    ok(run_cli("prepare", cwd=lab))
    (lab / "prompt.txt").write_text(f"{BARE}\n")
    head = git(lab, "rev-parse", "HEAD")
    for args in (("run", "-m", "baseline"), ("noise", "--runs", "2"), ("loop", "--max-experiments", "1")):
        done = run_cli(*args, cwd=lab)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert "the task prompt needs AUTORESEARCH_GRADER_BASE_URL and AUTORESEARCH_GRADER_MODEL set" in done.stderr
        assert "http://localhost:11434/v1" in done.stderr and "Traceback" not in done.stderr
        unchanged(lab, head, "M prompt.txt")
    done = run_cli("run", "-m", "baseline", cwd=lab, env={"AUTORESEARCH_GRADER_BASE_URL": "http://127.0.0.1:9/v1"})
    assert done.returncode == 2 and "needs AUTORESEARCH_GRADER_MODEL set" in done.stderr
    unchanged(lab, head, "M prompt.txt")
    grader = {"AUTORESEARCH_GRADER_BASE_URL": "http://127.0.0.1:9/v1", "AUTORESEARCH_GRADER_MODEL": "m"}
    git(lab, "checkout", "--", "prompt.txt")
    done = run_cli("loop", "--max-experiments", "1", cwd=lab, env=grader)   # the default agent: optuna
    assert done.returncode == 2 and "prompt.txt has no hyperparameter block" in done.stderr, done.stderr
    assert "--agent openai" in done.stderr
    unchanged(lab, head, "")


@pytest.mark.parametrize("grader", ["down", "garbage"])
def test_a_grader_that_fails_is_a_broken_task_that_records_nothing(cache, tmp_path, grader):
    lab = new_lab(tmp_path)
    (lab / "prompt.txt").write_text(f"{BARE}\n")
    head = git(lab, "rev-parse", "HEAD")
    if grader == "down":
        url = f"http://127.0.0.1:{closed_port()}/v1"
        done = run_cli("run", "-m", "baseline", cwd=lab, env={"AUTORESEARCH_GRADER_BASE_URL": url,
                                                               "AUTORESEARCH_GRADER_MODEL": "grader"})
        assert f"{url}/chat/completions cannot be reached" in done.stderr, done.stderr
    else:
        with StandIn(answers(cache), mode="garbage") as server:
            done = run_cli("run", "-m", "baseline", cwd=lab, env=server.env())
        assert "did not answer with a chat completion: '<html>a proxy error page</html>'" in done.stderr, done.stderr
    assert done.returncode == 1 and "the grader failed" in done.stderr
    assert "The task is broken, not the candidate: nothing was recorded" in done.stderr
    unchanged(lab, head, "M prompt.txt")


def test_a_grader_that_is_down_stops_the_loop_recording_nothing(cache, tmp_path):
    lab = new_lab(tmp_path)
    head = git(lab, "rev-parse", "HEAD")
    url = f"http://127.0.0.1:{closed_port()}/v1"
    with StandIn(answers(cache)) as agent:   # the agent is up, the grader is not
        done = run_cli("loop", "--max-experiments", "2", "--agent", "openai", "--base-url", agent.url, "--model",
                       "scripted", cwd=lab, env={"AUTORESEARCH_GRADER_BASE_URL": url,
                                                 "AUTORESEARCH_GRADER_MODEL": "grader"})
    assert done.returncode == 1 and f"{url}/chat/completions cannot be reached" in done.stderr, done.stderr
    assert "nothing was recorded" in done.stderr and "running the baseline (prompt.txt as it is)" in done.stdout
    assert not agent.proposals   # it stopped at the baseline, before asking the agent
    unchanged(lab, head, "")


def test_an_invalid_prompt_is_never_scored(cache, tmp_path):
    lab = new_lab(tmp_path)
    with StandIn(answers(cache)) as grader:
        ok(run_cli("run", "-m", "baseline", cwd=lab, env=grader.env()))
        (lab / "prompt.txt").write_text("x" * 4001)
        done = run_cli("run", "-m", "too long", cwd=lab, env=grader.env())
        assert done.returncode == 3 and "crash" in done.stdout and "the limit is 4000" in done.stdout, done.stdout
        assert len(grader.graded) == 80   # the run refused it: no question was sent for it
    assert [r["status"] for r in rows(lab)] == ["keep", "crash"]


# ---------------------------------------------------------------------------
# What the run and the evaluator can reach

ATTACK = '''
import glob, json, os, socket, urllib.request
def attempt(what, fn):
    try:
        print(f"{what}: REACHED {fn()!r}"[:200])
    except Exception as e:
        print(f"{what}: blocked ({type(e).__name__})")
attempt("network", lambda: urllib.request.urlopen("GRADER_URL/models", timeout=5).read())
attempt("hidden", lambda: open(os.environ["AUTORESEARCH_TASK_DATA"] + "/hidden/val.jsonl").read()[:40])
attempt("cache", lambda: open(glob.glob(os.environ["AUTORESEARCH_CACHE"] + "/tasks/*/hidden/*")[0]).read()[:40])
print("variables:", sorted(k for k in os.environ if k.startswith("AUTORESEARCH_GRADER")))
'''


def attack_task(tmp_path: Path, url: str, network: bool = True) -> Path:
    """The prompt task with a run step that reaches for the grader, the hidden answers and the grader's
    variables (check.py is frozen and a prompt runs nothing, so the attack goes in the task itself)."""
    folder = tmp_path / "attack"
    shutil.copytree(tasks.find("prompt"), folder, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "check.py").write_text(textwrap.dedent(ATTACK).replace("GRADER_URL", url))
    if not network:
        toml = folder / "task.toml"
        toml.write_text(toml.read_text().replace("evaluate_network = true", "evaluate_network = false"))
    return folder


@pytest.mark.parametrize("mode", [pytest.param("require", marks=needs_sandbox), "off"])
def test_the_run_reaches_no_grader_no_answers_no_key(cache, tmp_path, mode):
    with StandIn({}) as grader:   # the task names the grader's URL, so the stand-in starts first
        lab = new_lab(tmp_path, str(attack_task(tmp_path, grader.url)))
        grader.known = answers(cache)
        out = ok(run_cli("run", "-m", "baseline", "--sandbox", mode, cwd=lab, env=grader.env(key="sk-secret")))
        assert out.startswith("keep") and "accuracy 0.350000" in out   # the evaluator still reaches the grader
    log = (lab / "runs" / "0001.log").read_text()
    assert "variables: []" in log and "sk-secret" not in log     # never given to the run, sandbox or not
    if mode == "require":
        assert "network: blocked" in log and "hidden: blocked" in log and "cache: blocked" in log, log
        assert "REACHED" not in log
    else:   # without the sandbox nothing is prevented (README: detected, not prevented): the probes work
        assert "network: REACHED" in log and "hidden: REACHED" in log, log


@needs_sandbox
def test_the_evaluator_has_the_network_only_when_its_task_says(cache, tmp_path):
    with StandIn({}) as grader:
        lab = new_lab(tmp_path, str(attack_task(tmp_path, grader.url, network=False)))
        grader.known = answers(cache)
        done = run_cli("run", "-m", "baseline", "--sandbox", "require", cwd=lab, env=grader.env())
    assert done.returncode == 1 and "the grader failed" in done.stderr and "cannot be reached" in done.stderr
    assert not grader.graded


def test_the_sandbox_commands(tmp_path):
    ws, data, cand, out, run_dir = (tmp_path / n for n in ("ws", "data", "cand", "out", "run"))
    offline = sandbox.task_eval_command(["python"], ws, data, cand, out, {})
    online = sandbox.task_eval_command(["python"], ws, data, cand, out, {}, network=True)
    run = sandbox.task_run_command(["python"], ws, run_dir, [], data, (), {})
    assert "--unshare-net" in offline and "--unshare-net" in run and "--unshare-net" not in online
    assert "/etc/resolv.conf" not in offline and "/etc/resolv.conf" not in run
    if Path("/etc/resolv.conf").exists():
        assert online[online.index("/etc/resolv.conf") - 1] == "--ro-bind"
    assert not any("private" in a for a in online)          # public certificates only
    writable = [online[i + 1] for i, a in enumerate(online) if a == "--bind"]
    assert writable == [str(out)]                            # still writes only its output folder


@pytest.mark.parametrize("line, message", [
    ("evaluate_network = 1", "must be true or false"),
    ('evaluate_env = "KEY"', "list of environment variable names"),
    ('requires_env = ["NOT-A-NAME"]', "is not an environment variable name"),
    ('requires_env = ["AUTORESEARCH_RESULT"]', "the harness's own"),
    ('evaluate_env = ["LD_PRELOAD"]', "the harness's own"),
])
def test_task_toml_checks_the_new_keys(tmp_path, line, message):
    folder = tmp_path / "t"
    shutil.copytree(tasks.find("prompt"), folder, ignore=shutil.ignore_patterns("__pycache__"))
    toml = folder / "task.toml"
    key = line.split(" =")[0]
    toml.write_text("\n".join(l for l in toml.read_text().splitlines() if not l.startswith(key)) + f"\n{line}\n")
    with pytest.raises(tasks.TaskError, match=message):
        tasks.load(folder)


def test_the_task_passes_its_variables_to_the_evaluator_only():
    task = tasks.load(tasks.find("prompt"))
    assert task.evaluate_network and task.rule == "strict" and task.direction == "maximize"
    environ = {"AUTORESEARCH_GRADER_BASE_URL": "u", "AUTORESEARCH_GRADER_MODEL": "m", "AUTORESEARCH_GRADER_API_KEY": "",
               "OPENAI_API_KEY": "agent's"}
    assert task.evaluator_env(environ) == {"AUTORESEARCH_GRADER_BASE_URL": "u", "AUTORESEARCH_GRADER_MODEL": "m"}
    task.check_env(environ)
    with pytest.raises(tasks.TaskUnready, match="needs AUTORESEARCH_GRADER_MODEL set"):
        task.check_env({"AUTORESEARCH_GRADER_BASE_URL": "u"})
    assert set(task.private_env) == {"AUTORESEARCH_GRADER_BASE_URL", "AUTORESEARCH_GRADER_MODEL",
                                     "AUTORESEARCH_GRADER_API_KEY"}
