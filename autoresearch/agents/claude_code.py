"""Claude Code (the `claude` CLI), run headless in the workspace and allowed to edit train.py only (on a
task workspace: the task's editable files only).

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
by Claude Code itself. On a task workspace the rules name each editable file instead (`Read(./f)`,
`Edit(./f)`, `Write(./f)` for each) and add `Read(./f)` for each of the task's `readable` files.
`--restricted` makes it ignore the user's and the project's settings files, whose allow rules would
otherwise widen these (it also keeps the file tools inside the workspace). Reading stays possible inside the
workspace only. Claude Code edits the files itself, so the Proposal carries no text (train_py=None); the
harness guard still checks that nothing but the editable files changed before anything runs.

Tested with Claude Code 2.1.330 (older versions may lack `--restricted` or the `dontAsk` mode). What it
shares with the Codex backend (the prompt's instructions, the DESCRIPTION line, running a CLI with a
timeout) is in `cli_tools.py`.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from .. import task as tasks
from . import http
from .base import CONFIG, REPLY, TRANSIENT, AgentError, AgentUnavailable, Context, Endpoint, Proposal, as_float, as_int
from .cli_tools import (description_from, editable_files, find_executable, prompt_for_cli, require_some_change,
                        run_cli)
from .http import excerpt

BIN_ENV = "AUTORESEARCH_CLAUDE_BIN"
INSTALL_HINT = "npm install -g @anthropic-ai/claude-code"
ENDPOINT = Endpoint(base_url_env="ANTHROPIC_BASE_URL", key_env="ANTHROPIC_API_KEY",
                    other_credentials=("ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN", "CLAUDE_CODE_USE_BEDROCK",
                                       "CLAUDE_CODE_USE_VERTEX", "CLAUDE_CODE_USE_FOUNDRY"))
DEFAULT_TIMEOUT = 1800.0
PLAIN_PATH = re.compile(r"[A-Za-z0-9._/-]+")   # a path a permission rule can name as it is


def allowed_rules(root: Path | None) -> str:
    """The allow rules: read, edit and write each editable file; read the task's `readable` files."""
    task = tasks.of(root) if root is not None else tasks.GPT_TASK
    files = editable_files(root)
    readable = [] if task.is_gpt else [f for f in task.readable_files(root) if f not in files]
    return ",".join([f"{tool}(./{f})" for f in files for tool in ("Read", "Edit", "Write")]
                    + [f"Read(./{f})" for f in readable])


class ClaudeCodeAgent:
    name = "claude"

    def __init__(self, workspace: Path | None = None, model: str | None = None, base_url: str | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT, executable: str | None = None, check_timeout: float = 5.0):
        self.workspace = Path(workspace) if workspace is not None else None
        self.model = ENDPOINT.model(model)
        self.base_url = ENDPOINT.base_url(base_url)
        self.timeout = timeout
        self.executable = executable
        self.check_timeout = check_timeout

    # -- setup ---------------------------------------------------------------------------------------

    def _binary(self) -> str:
        return find_executable(self.executable or os.environ.get(BIN_ENV), "claude", BIN_ENV, INSTALL_HINT)

    def check(self) -> None:
        odd = [f for f in editable_files(self.workspace) if not PLAIN_PATH.fullmatch(f)]
        if odd:  # a permission rule reads such a name as a pattern or as two rules
            raise AgentUnavailable(f"the claude agent cannot be limited to {', '.join(odd)}: its permission rules "
                                   "take paths of letters, digits and . _ / - only (rename the file)")
        self._binary()
        if not ENDPOINT.has_credentials():
            raise AgentUnavailable("Claude Code has no credentials here: set ANTHROPIC_API_KEY (or "
                                   "ANTHROPIC_AUTH_TOKEN, with ANTHROPIC_BASE_URL for a gateway or proxy)")
        if self.base_url:  # a server of one's own may be down; the CLI would only retry until it gives up
            http.probe(f"{self.base_url}/v1/models", {}, timeout=self.check_timeout, what="the Anthropic API server")

    def command(self, binary: str, root: Path | None = None) -> list[str]:
        """The command line of one proposal in workspace `root` (the agent's by default; the prompt goes
        to stdin)."""
        cmd = [binary, "-p", "--output-format", "json", "--restricted", "--no-session-persistence",
               "--tools=Read,Edit,Write", f"--allowedTools={allowed_rules(root or self.workspace)}",
               "--disallowedTools=Bash", "--permission-mode", "dontAsk"]
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
        run = run_cli(self.command(binary, root), prompt_for_cli(context), root, self.environment(), self.timeout,
                      what="claude")
        result = parse_result(run.stdout)
        if result is None:
            raise AgentError(f"claude failed (exit {run.returncode}, no JSON result): "
                             f"{excerpt(run.stderr or run.stdout)!r}", kind=TRANSIENT, reply=run.stdout + run.stderr)
        text = result.get("result") if isinstance(result.get("result"), str) else ""
        input_tokens, output_tokens, served = usage_of(result)
        spent = Proposal(description="", train_py=None, model=served or self.model or "", input_tokens=input_tokens,
                         output_tokens=output_tokens, cost_usd=self.cost_of(result),
                         cost_estimated=self.cost_of(result) is not None, seconds=time.monotonic() - started,
                         reply=text or run.stdout, refused=refusals(result, root))
        if result.get("is_error") or run.returncode != 0:
            detail = text or run.stderr or run.stdout
            status = as_int(result.get("api_error_status"))
            kind = CONFIG if status is not None and 400 <= status < 500 and status not in (408, 429) else TRANSIENT
            raise AgentError(f"claude failed (exit {run.returncode}"
                             + (f", API status {status}" if status else "") + f"): {excerpt(detail)!r}",
                             kind=kind, reply=spent.reply, spent=spent)
        try:
            require_some_change(root, context, "claude")
        except AgentError as e:
            refused = f" (refused: {', '.join(spent.refused)})" if spent.refused else ""
            raise AgentError(f"{e}{refused}", kind=REPLY, reply=spent.reply, spent=spent) from None
        spent.description = description_from(text)
        spent.extra = {"session_id": result.get("session_id"), "num_turns": result.get("num_turns"),
                       "requested_model": self.model}
        return spent

    def cost_of(self, result: dict) -> float | None:
        """Claude Code's `total_cost_usd`: its own list-price estimate for the model it thinks it used. Through
        a base URL of one's own (a proxy, another server) that price says nothing: no cost is recorded."""
        return None if self.base_url else as_float(result.get("total_cost_usd"))

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


def refusals(result: dict, root: Path) -> list[str]:
    """`Tool path` for each tool call Claude Code refused (its `permission_denials`), paths relative to `root`."""
    out = []
    for denial in result.get("permission_denials") or []:
        if not isinstance(denial, dict):
            continue
        tool = str(denial.get("tool_name") or "?")
        given = denial.get("tool_input") if isinstance(denial.get("tool_input"), dict) else {}
        target = str(given.get("file_path") or given.get("path") or given.get("command") or "")
        try:
            target = str(Path(target).relative_to(root)) if target.startswith("/") else target
        except ValueError:
            pass
        out.append(f"{tool} {target}".strip())
    return out


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
            inp += sum(as_int(u.get(k)) or 0 for k in _MODEL_INPUT_KEYS)
            o = as_int(u.get("outputTokens")) or 0
            out += o
            if o > most:
                served, most = name, o
        return inp, out, served
    u = result.get("usage")
    if isinstance(u, dict):
        inp = sum(as_int(u.get(k)) or 0 for k in _USAGE_INPUT_KEYS)
        return inp, as_int(u.get("output_tokens")), None
    return None, None, None
