"""Claude Code (the `claude` CLI), run headless in the workspace and allowed to edit train.py only.

    executable  $AUTORESEARCH_CLAUDE_BIN, else `claude` on PATH (npm install -g @anthropic-ai/claude-code)
    key         $ANTHROPIC_API_KEY or $ANTHROPIC_AUTH_TOKEN (or CLAUDE_CODE_OAUTH_TOKEN, or Bedrock/Vertex/Foundry
                set up through Claude Code's own CLAUDE_CODE_USE_* variables)
    base URL    --base-url, else $ANTHROPIC_BASE_URL (optional: any server speaking the Messages API; check()
                makes sure it answers)
    model       --model, else $AUTORESEARCH_MODEL, else Claude Code's default

One proposal is one `claude -p` run with the shared prompt on stdin, in the workspace directory:

    claude -p --output-format json --restricted --tools=Read,Edit,Write \
        --allowedTools=Read(./train.py),Edit(./train.py),Write(./train.py) --disallowedTools=Bash \
        --permission-mode dontAsk [--model M]

`--tools` leaves it only the file tools (no shell, no web); in `dontAsk` mode anything not allowed by a rule is
refused without a prompt, and the only write rules name ./train.py, so an edit of any other file is denied
by Claude Code itself. `--restricted` makes it ignore the user's and the project's settings files, whose
allow rules would otherwise widen these (it also keeps the file tools inside the workspace). Reading stays
possible inside the workspace only. Claude Code edits the file itself, so the Proposal carries no text
(train_py=None); the harness guard still checks that nothing but train.py changed before anything runs.

Tested with Claude Code 2.1.330 (older versions may lack `--restricted` or the `dontAsk` mode).

The helpers below the class (prompt suffix, DESCRIPTION parsing, running a CLI with a timeout) are shared
with the Codex backend (`codex_cli.py`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ..git import git
from . import http
from .base import AgentError, AgentUnavailable, Context, Proposal
from .http import excerpt

BIN_ENV = "AUTORESEARCH_CLAUDE_BIN"
INSTALL_HINT = "npm install -g @anthropic-ai/claude-code"
AUTH_ENVS = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN",
             "CLAUDE_CODE_USE_BEDROCK", "CLAUDE_CODE_USE_VERTEX", "CLAUDE_CODE_USE_FOUNDRY")
DEFAULT_TIMEOUT = 1800.0
ALLOWED_RULES = "Read(./train.py),Edit(./train.py),Write(./train.py)"


class ClaudeCodeAgent:
    name = "claude"

    def __init__(self, workspace: Path | None = None, model: str | None = None, base_url: str | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT, executable: str | None = None, check_timeout: float = 5.0):
        self.workspace = Path(workspace) if workspace is not None else None
        self.model = model or os.environ.get("AUTORESEARCH_MODEL") or None
        self.base_url = (base_url or os.environ.get("ANTHROPIC_BASE_URL") or "").rstrip("/") or None
        self.timeout = timeout
        self.executable = executable
        self.check_timeout = check_timeout

    # -- setup ---------------------------------------------------------------------------------------

    def _binary(self) -> str:
        return find_executable(self.executable or os.environ.get(BIN_ENV), "claude", BIN_ENV, INSTALL_HINT)

    def check(self) -> None:
        self._binary()
        if not any(os.environ.get(name) for name in AUTH_ENVS):
            raise AgentUnavailable("Claude Code has no credentials here: set ANTHROPIC_API_KEY (or "
                                   "ANTHROPIC_AUTH_TOKEN, with ANTHROPIC_BASE_URL for a gateway or proxy)")
        if self.base_url:  # a server of one's own may be down; the CLI would only retry until it gives up
            http.probe(f"{self.base_url}/v1/models", {}, timeout=self.check_timeout, what="the Anthropic API server")

    def command(self, binary: str) -> list[str]:
        """The command line of one proposal (the prompt goes to stdin)."""
        cmd = [binary, "-p", "--output-format", "json", "--restricted", "--no-session-persistence",
               "--tools=Read,Edit,Write", f"--allowedTools={ALLOWED_RULES}", "--disallowedTools=Bash",
               "--permission-mode", "dontAsk"]
        if self.model:
            cmd += ["--model", self.model]
        return cmd

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.base_url:
            env["ANTHROPIC_BASE_URL"] = self.base_url
        return env

    # -- one proposal --------------------------------------------------------------------------------

    def propose(self, context: Context) -> Proposal:
        binary = self._binary()
        root = Path(self.workspace or context.workspace)
        started = time.monotonic()
        run = run_cli(self.command(binary), prompt_for_cli(context), root, self.environment(), self.timeout,
                      what="claude")
        result = parse_result(run.stdout)
        if result is None:
            raise AgentError(f"claude failed (exit {run.returncode}, no JSON result): "
                             f"{excerpt(run.stderr or run.stdout)!r}")
        text = result.get("result") if isinstance(result.get("result"), str) else ""
        if result.get("is_error") or run.returncode != 0:
            detail = text or run.stderr or run.stdout
            status = result.get("api_error_status")
            raise AgentError(f"claude failed (exit {run.returncode}"
                             + (f", API status {status}" if status else "") + f"): {excerpt(detail)!r}")
        require_some_change(root, context, "claude")
        input_tokens, output_tokens, served = usage_of(result)
        denials = result.get("permission_denials") or []
        return Proposal(description=description_from(text), train_py=None,
                        model=self.model or served or "", input_tokens=input_tokens, output_tokens=output_tokens,
                        cost_usd=_float(result.get("total_cost_usd")), seconds=time.monotonic() - started,
                        extra={"session_id": result.get("session_id"), "num_turns": result.get("num_turns"),
                               "served_model": served, "permission_denials": len(denials)})

    def observe(self, experiment) -> None:
        """Nothing to learn: every proposal starts from the ledger's history in the prompt."""


def parse_result(stdout: str) -> dict | None:
    """The `--output-format json` result object (the last JSON object line of stdout)."""
    candidates = [stdout.strip()] + [line.strip() for line in reversed(stdout.splitlines())]
    for candidate in candidates:
        if not candidate.startswith("{"):
            continue
        try:
            data = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(data, dict) and ("result" in data or data.get("type") == "result"):
            return data
    return None


_MODEL_INPUT_KEYS = ("inputTokens", "cacheReadInputTokens", "cacheCreationInputTokens")
_USAGE_INPUT_KEYS = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


def usage_of(result: dict) -> tuple[int | None, int | None, str | None]:
    """(input tokens, output tokens, model) summed over every model the run used.

    Input counts cached reads and cache writes too: all of it was prompt the model processed. The model is
    the one that wrote the most output (the main loop rather than a small helper call)."""
    per_model = result.get("modelUsage")
    if isinstance(per_model, dict) and per_model:
        inp = out = 0
        served, most = None, -1
        for name, u in per_model.items():
            if not isinstance(u, dict):
                continue
            inp += sum(_int(u.get(k)) or 0 for k in _MODEL_INPUT_KEYS)
            o = _int(u.get("outputTokens")) or 0
            out += o
            if o > most:
                served, most = name, o
        return inp, out, served
    u = result.get("usage")
    if isinstance(u, dict):
        inp = sum(_int(u.get(k)) or 0 for k in _USAGE_INPUT_KEYS)
        return inp, _int(u.get("output_tokens")), None
    return None, None, None


# ---------------------------------------------------------------------------------------------------
# Shared with codex_cli.py

CLI_INSTRUCTIONS = """\
What to do now: make ONE focused change to train.py that you expect to lower val_bpb, by editing the file
train.py in the current directory directly with your file-editing tool.
- Edit train.py only. Do not create, edit, move or delete any other file: such edits are refused, and a
  change outside train.py gets the whole experiment rejected.
- Do not run train.py or start any training or evaluation: the harness runs it after you finish, under
  its fixed time budget.
- Keep train.py a complete, runnable program.
- When you are done, end your final message with one line of the form
  DESCRIPTION: <one short line saying what you changed and why>"""

DESCRIPTION_RE = re.compile(r"^[\s>*_`#-]*DESCRIPTION[*_`]*\s*:[*_`]*\s*(.+?)\s*$", re.I | re.M)
MAX_DESCRIPTION = 200


def prompt_for_cli(context: Context) -> str:
    return context.prompt() + "\n\n" + CLI_INSTRUCTIONS + "\n"


def description_from(text: str) -> str:
    """The last `DESCRIPTION: ...` line of the agent's final message; else its first line, shortened."""
    matches = [m.group(1).strip("*_` ") for m in DESCRIPTION_RE.finditer(text or "")]
    matches = [m for m in matches if m]
    if matches:
        return _shorten(matches[-1])
    for line in (text or "").splitlines():
        line = line.strip().strip("#*_` ")
        if line:
            return _shorten(line)
    return "(no description)"


def _shorten(line: str) -> str:
    line = " ".join(line.split())
    return line if len(line) <= MAX_DESCRIPTION else line[: MAX_DESCRIPTION - 3] + "..."


def find_executable(configured: str | None, default: str, env_name: str, install_hint: str) -> str:
    """The CLI to run: `configured` (a path or a name on PATH) if given, else `default` on PATH."""
    name = configured or default
    path = shutil.which(name)
    if path is None:
        where = f"${env_name}={configured!r} is not an executable" if configured else f"`{default}` is not on PATH"
        raise AgentUnavailable(f"{where}: install it with `{install_hint}`, or point ${env_name} at it")
    return path


@dataclass
class CliRun:
    returncode: int
    stdout: str
    stderr: str


def run_cli(cmd: list[str], prompt: str, cwd: Path, env: dict[str, str], timeout: float, what: str) -> CliRun:
    """Run `cmd` in `cwd` with `prompt` on stdin; past `timeout` its whole process group is ended."""
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
    except OSError as e:
        raise AgentUnavailable(f"could not start {what} ({cmd[0]}): {e}") from None
    try:
        stdout, stderr = proc.communicate(prompt, timeout=timeout)
    except subprocess.TimeoutExpired:
        _end_group(proc)
        stdout, stderr = proc.communicate()
        last = (stdout or "").strip().splitlines()[-1:] or (stderr or "").strip().splitlines()[-1:] or [""]
        raise AgentError(f"{what} did not finish within {timeout:g} s and was stopped; "
                         f"its last output: {excerpt(last[0])!r}") from None
    except BaseException:  # Ctrl-C while the CLI works: do not leave it editing the workspace
        _end_group(proc)
        raise
    return CliRun(proc.returncode, stdout or "", stderr or "")


def _end_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def require_some_change(root: Path, context: Context, what: str) -> None:
    """An agent that changed nothing at all produced no experiment (an unchanged train.py would only rerun
    the frontier). Changes to other files are left for the harness guard to reject and put aside."""
    train = root / "train.py"
    current = train.read_text() if train.exists() else None
    if current == context.train_py and not git(root, "status", "--porcelain", check=False).strip():
        raise AgentError(f"{what} finished without changing train.py")


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)
