"""Codex CLI (`codex exec`), run non-interactively in the workspace.

    executable  $AUTORESEARCH_CODEX_BIN, else `codex` on PATH (npm install -g @openai/codex)
    key         $OPENAI_API_KEY or $CODEX_API_KEY, or a `codex login`, or a provider set up in Codex's
                config.toml (`model_provider`), or a base URL
    base URL    --base-url, else $OPENAI_BASE_URL (optional): a server speaking the OpenAI Responses API
                (Codex speaks no other); the backend adds a Codex model provider for it on the command line,
                and check() makes sure it answers (Codex would wait for an unreachable one indefinitely)
    model       --model, else $AUTORESEARCH_MODEL, else Codex's default

One proposal is one `codex exec --json` run with the shared prompt on stdin, in the workspace directory,
never asking for approval, under a permission profile made for the run:

    codex exec --json --skip-git-repo-check -c approval_policy="never"
        -c default_permissions="autoresearch"
        -c permissions.autoresearch.filesystem={":root"="read", ":workspace_roots"={"."="write",
                                                 "program.md"="read", ".git"="read", ...}}
        [-m MODEL] [-c model_provider=... for a base URL] -

Codex cannot be limited to a single file: a writable root must be a directory (a file there crashes its
sandbox setup), and globs may only deny. So the profile makes the workspace writable and every entry already
in it other than train.py read-only (on a task workspace: every entry other than the task's editable files,
looking inside each folder that holds one, so `src/a.py` editable leaves `src/b.py` read-only): its patch
tool refuses to touch them, and commands it runs meet a read-only file system there (the network is off
for them). What it can still do is create new files (in such a folder too); those are caught by the
harness guard (`experiment.out_of_scope`), which rejects the experiment before anything runs and puts the
changes aside. Note: a `sandbox_mode` in the user's Codex config.toml makes Codex use that older setting
instead of permission profiles; the guard then remains the only enforcement.

Codex edits the files itself, so the Proposal carries no text (train_py=None). Tested with codex-cli 0.169.0
(permission profiles need 0.138 or later).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import tomllib
from pathlib import Path

from ..harness.paths import cache_dir
from . import http
from .base import CONFIG, TRANSIENT, AgentError, AgentUnavailable, Context, Endpoint, Proposal, as_int
from .cli_tools import (description_from, editable_files, find_executable, prompt_for_cli, require_some_change,
                        run_cli)
from .http import excerpt

BIN_ENV = "AUTORESEARCH_CODEX_BIN"
INSTALL_HINT = "npm install -g @openai/codex"
ENDPOINT = Endpoint(base_url_env="OPENAI_BASE_URL", key_env="OPENAI_API_KEY", other_credentials=("CODEX_API_KEY",))
DEFAULT_TIMEOUT = 1800.0
PROFILE = "autoresearch"
PROVIDER = "autoresearch"


class CodexAgent:
    name = "codex"

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
        return find_executable(self.executable or os.environ.get(BIN_ENV), "codex", BIN_ENV, INSTALL_HINT)

    def check(self) -> None:
        self._binary()
        if self.base_url:  # Codex waits for an unreachable server indefinitely ("waiting for network")
            key = ENDPOINT.key()
            http.probe(f"{self.base_url}/models", {"Authorization": f"Bearer {key}"} if key else {},
                       timeout=self.check_timeout, what="the Responses API server")
            return
        if ENDPOINT.has_credentials():
            return
        home = codex_home()
        if (home / "auth.json").is_file() or _configured_provider(home):
            return
        raise AgentUnavailable("Codex has no credentials here: set OPENAI_API_KEY, run `codex login`, or "
                               "point --base-url / OPENAI_BASE_URL at a server speaking the Responses API")

    def command(self, binary: str, root: Path) -> list[str]:
        """The command line of one proposal in workspace `root` (the prompt goes to stdin)."""
        cmd = [binary, "exec", "--json", "--ephemeral", "--skip-git-repo-check",
               "-c", 'approval_policy="never"',
               "-c", f'default_permissions="{PROFILE}"',
               "-c", f"permissions.{PROFILE}.filesystem={filesystem_rules(root)}"]
        if self.model:
            cmd += ["-m", self.model]
        if self.base_url:
            provider = {"name": "autoresearch base URL", "base_url": self.base_url, "wire_api": "responses",
                        "supports_websockets": False}
            if ENDPOINT.key():
                provider["env_key"] = ENDPOINT.key_env
            cmd += ["-c", f'model_provider="{PROVIDER}"', "-c", f"model_providers.{PROVIDER}={_toml(provider)}"]
        return cmd + ["-"]

    # -- one proposal --------------------------------------------------------------------------------

    def propose(self, context: Context) -> Proposal:
        binary = self._binary()
        root = Path(self.workspace or context.workspace)
        started = time.monotonic()
        env = dict(os.environ, PATH=path_without_bwrap(os.environ.get("PATH", "")))
        run = run_cli(self.command(binary, root), prompt_for_cli(context), root, env, self.timeout, what="codex")
        events = parse_events(run.stdout)
        if run.returncode != 0 or events.failure:
            detail = events.failure or stderr_gist(run.stderr) or run.stdout
            status = re.search(r"\bstatus:? (\d{3})\b", detail or "")
            code = int(status.group(1)) if status else None
            kind = CONFIG if code is not None and 400 <= code < 500 and code not in (408, 429) else TRANSIENT
            raise AgentError(f"codex failed (exit {run.returncode}): {excerpt(detail)!r}", kind=kind,
                             reply=run.stdout + run.stderr)
        if events.message is None:
            raise AgentError(f"codex finished without a final message: {excerpt(run.stderr or run.stdout)!r}",
                             reply=run.stdout + run.stderr)
        try:
            require_some_change(root, context, "codex")
        except AgentError as e:
            raise AgentError(str(e), reply=events.message, spent=Proposal(
                description="", model=self.model or "", input_tokens=events.input_tokens,
                output_tokens=events.output_tokens, seconds=time.monotonic() - started)) from None
        return Proposal(description=description_from(events.message), train_py=None, model=self.model or "",
                        input_tokens=events.input_tokens, output_tokens=events.output_tokens, cost_usd=None,
                        seconds=time.monotonic() - started, reply=events.message,
                        extra={"thread_id": events.thread_id, "files_changed": sorted(events.files_changed),
                               "commands": events.commands})

    def observe(self, experiment) -> None:
        """Nothing to learn: every proposal starts from the ledger's history in the prompt."""


def path_without_bwrap(path: str) -> str:
    """PATH with every folder holding `bwrap` replaced by a copy of links to all of it but `bwrap`.

    Codex 0.169 runs its file edits inside a system bubblewrap when it finds one on PATH, and those edits
    then fail under our permission profile ("Failed to write file"); without one it enforces the same
    profile itself (tests/test_agents_cli.py checks that it does). Our own sandbox needs bubblewrap
    installed, so Codex is shown a PATH without it.
    """
    folders = []
    for folder in path.split(os.pathsep):
        if not folder or not (Path(folder) / "bwrap").exists():
            folders.append(folder)
            continue
        shadow = cache_dir() / "codex-path" / hashlib.sha256(folder.encode()).hexdigest()[:16]
        if not shadow.is_dir() or shadow.stat().st_mtime < Path(folder).stat().st_mtime:
            tmp = shadow.with_name(shadow.name + f".tmp{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for entry in Path(folder).iterdir():
                if entry.name != "bwrap":
                    (tmp / entry.name).symlink_to(entry)
            shutil.rmtree(shadow, ignore_errors=True)
            tmp.replace(shadow)
        folders.append(str(shadow))
    return os.pathsep.join(folders)


class Events:
    """What a `codex exec --json` run reported: its final message, token usage, failure, changed files."""

    def __init__(self):
        self.message: str | None = None
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.failure: str | None = None
        self.thread_id: str | None = None
        self.files_changed: set[str] = set()
        self.commands = 0


def parse_events(stdout: str) -> Events:
    """Read the JSONL event stream; lines that are not JSON objects are skipped."""
    ev = Events()
    for line in stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict):
            continue
        kind = event.get("type")
        if kind == "thread.started":
            ev.thread_id = event.get("thread_id")
        elif kind == "item.completed" and isinstance(event.get("item"), dict):
            item = event["item"]
            if item.get("type") == "agent_message" and isinstance(item.get("text"), str):
                ev.message = item["text"]
            elif item.get("type") == "file_change":
                ev.files_changed |= {c.get("path", "") for c in item.get("changes") or [] if isinstance(c, dict)}
            elif item.get("type") == "command_execution":
                ev.commands += 1
        elif kind == "turn.completed":
            usage = event.get("usage") or {}
            for attr, key in (("input_tokens", "input_tokens"), ("output_tokens", "output_tokens")):
                value = as_int(usage.get(key))
                if value is not None:
                    setattr(ev, attr, (getattr(ev, attr) or 0) + value)
        elif kind == "turn.failed":
            error = event.get("error") or {}
            ev.failure = (error.get("message") if isinstance(error, dict) else str(error)) or "turn failed"
    return ev


def stderr_gist(stderr: str) -> str:
    """The telling part of Codex's stderr: its `Error: ...` line, else its last line that is not a
    backtrace frame."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("Error:"):
            return line
    frames = [line for line in lines if not re.match(r"^\d+: ", line) and line != "Stack backtrace:"]
    return frames[-1] if frames else ""


def filesystem_rules(root: Path) -> str:
    """The profile's filesystem table, as TOML: read everywhere, write in the workspace except for every
    entry already there other than the editable files (train.py). A folder that holds an editable file is
    not itself read-only: its other entries are, one by one, down to the file."""
    editable = set(editable_files(root))
    inside = {".": "write"}

    def walk(folder: str) -> None:
        for entry in sorted(os.listdir(root / folder)):
            path = f"{folder}/{entry}" if folder else entry
            if path in editable:
                continue
            if (root / path).is_dir() and not (root / path).is_symlink() and \
                    any(f.startswith(path + "/") for f in editable):
                walk(path)
            else:
                inside[path] = "read"

    walk("")
    return _toml({":root": "read", ":workspace_roots": inside})


def _toml(value) -> str:
    """An inline TOML value (strings in JSON quoting, which TOML's basic strings accept)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def codex_home() -> Path:
    return Path(os.environ.get("CODEX_HOME") or Path.home() / ".codex")


def _configured_provider(home: Path) -> bool:
    try:
        with open(home / "config.toml", "rb") as f:
            return bool(tomllib.load(f).get("model_provider"))
    except (OSError, tomllib.TOMLDecodeError):
        return False
