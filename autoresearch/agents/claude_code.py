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

Tested with Claude Code 2.1.330 (older versions may lack `--restricted` or the `dontAsk` mode). What it
shares with the Codex backend (the prompt's instructions, the DESCRIPTION line, running a CLI with a
timeout) is in `cli_tools.py`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..layout import CANDIDATE
from . import http
from .base import AgentError, AgentUnavailable, Context, Endpoint, Proposal, as_float, as_int
from .cli_tools import description_from, find_executable, prompt_for_cli, require_some_change, run_cli
from .http import excerpt

BIN_ENV = "AUTORESEARCH_CLAUDE_BIN"
INSTALL_HINT = "npm install -g @anthropic-ai/claude-code"
ENDPOINT = Endpoint(base_url_env="ANTHROPIC_BASE_URL", key_env="ANTHROPIC_API_KEY",
                    other_credentials=("ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN", "CLAUDE_CODE_USE_BEDROCK",
                                       "CLAUDE_CODE_USE_VERTEX", "CLAUDE_CODE_USE_FOUNDRY"))
DEFAULT_TIMEOUT = 1800.0
ALLOWED_RULES = f"Read(./{CANDIDATE}),Edit(./{CANDIDATE}),Write(./{CANDIDATE})"


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
        self._binary()
        if not ENDPOINT.has_credentials():
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
                        cost_usd=as_float(result.get("total_cost_usd")), seconds=time.monotonic() - started,
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
