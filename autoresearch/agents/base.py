"""The one interface every agent backend implements, and the context it is given.

An agent proposes; the harness disposes. `propose(context)` returns a Proposal: either the new texts of
the files it changes (train.py, or a task's editable files: backends that answer with edits, applied by
the harness) or nothing, for backends that edit the workspace themselves (coding-agent CLIs). Either way
the next step is `autoresearch run`, whose guard decides what may run. `observe(experiment)` lets a
backend learn from every recorded result.

Backends declare, the base resolves: a backend that talks to a model names its variables in an Endpoint
(base URL, key, default model), and every one of them resolves the flag, the environment and the default
the same way. `as_int` / `as_float` read the numbers of a JSON answer (token counts, cost).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


CONFIG, TRANSIENT, REPLY = "config", "transient", "reply"   # the kinds of AgentError


class AgentError(RuntimeError):
    """A backend could not produce a proposal. Its `kind` tells the loop what to do:

        config     the request itself is wrong (unknown model, rejected key, any other 4xx): retrying cannot
                   help, the loop stops at once
        transient  a server error, a timeout, a dropped connection: the loop backs off and tries again
        reply      an answer came but could not be used (no edits, edits that do not apply): tried again

    `reply` keeps what the agent answered, `spent` what the attempt cost (a Proposal with no description:
    model, tokens, cost), `retry_after` the wait a server asked for. The loop records all of it."""

    kind = REPLY

    def __init__(self, message: str, *, kind: str | None = None, reply: str = "", spent: "Proposal | None" = None,
                 retry_after: float | None = None):
        super().__init__(message)
        if kind is not None:
            self.kind = kind
        self.reply = reply
        self.spent = spent
        self.retry_after = retry_after


class AgentUnavailable(AgentError):
    """A backend cannot work at all (missing key, unreachable server, CLI not installed): stop before looping."""

    kind = CONFIG


@dataclass
class Failure:
    """What went wrong with the previous attempt, for one fix attempt of the same idea."""

    description: str
    status: str
    error_class: str
    log_tail: str
    diff: str


@dataclass
class Context:
    workspace: Path
    program: str            # program.md
    train_py: str           # the frontier's train.py
    history: str            # compact table of what was tried, kept, discarded, crashed
    budget_seconds: float
    failure: Failure | None = None
    file: str = "train.py"  # the file train_py holds: a task's first editable file (task.py)
    files: dict[str, str] = field(default_factory=dict)  # every editable file: name -> text, `file` first

    def texts(self) -> dict[str, str]:
        """The editable files the agent is shown, name -> text (the primary file first)."""
        return self.files or {self.file: self.train_py}

    def prompt(self) -> str:
        """The text a language-model backend is given (the same for every backend). With one editable file
        it names that file; with several, every one is shown under its own name."""
        texts = self.texts()
        if len(texts) == 1:
            what, shown = self.file, [f"The current {self.file} (the best so far):",
                                      "```python\n" + self.train_py + "\n```"]
        else:
            what, shown = "the files " + ", ".join(texts), []
            for name, text in texts.items():
                shown += [f"The current {name} (the best so far):", f"```{_language(name)}\n" + text + "\n```"]
        parts = [
            f"You are improving {what} in an autoresearch workspace. Instructions from the human (program.md):",
            self.program.strip(),
            "History of experiments on this branch (most recent last):",
            self.history.strip() or "(none yet: the next run is the baseline)",
            *shown,
        ]
        if self.failure is not None:
            f = self.failure
            parts += [
                f"Your previous attempt ({f.description!r}) ended as {f.status} [{f.error_class}].",
                "The end of its log:", "```\n" + f.log_tail + "\n```",
                "Its diff:", "```diff\n" + f.diff + "\n```",
                "Fix this attempt (same idea) if the problem is a simple bug; otherwise propose something else.",
            ]
        return "\n\n".join(parts)


def _language(name: str) -> str:
    """A code fence's language for a file shown in the prompt (none when the suffix says nothing)."""
    return {".py": "python", ".toml": "toml", ".json": "json", ".md": "markdown", ".sh": "bash"}.get(
        Path(name).suffix, "")


@dataclass
class Proposal:
    description: str
    train_py: str | None = None        # the primary file's new text; None: the backend edited the workspace itself
    files: dict[str, str] | None = None   # the new text of every file it changes (None: train_py's file only)
    model: str = ""                    # as the server reported it, else as requested
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None      # None: unknown (no cost is made up)
    cost_estimated: bool = False       # the cost is an estimate (e.g. Claude Code's list-price figure)
    seconds: float = 0.0
    reply: str = ""                    # what the agent answered, kept under runs/proposals/
    refused: list[str] = field(default_factory=list)   # "Tool path" of each edit the agent was refused
    extra: dict = field(default_factory=dict)

    def texts(self, primary: str) -> dict[str, str]:
        """Name -> new text of each file to write (`primary` is the file train_py holds); empty when the
        backend edited the workspace itself."""
        if self.files is not None:
            return self.files
        return {} if self.train_py is None else {primary: self.train_py}


class Agent(Protocol):
    name: str

    def check(self) -> None:
        """Raise AgentUnavailable with a clear message if this backend cannot work here."""

    def propose(self, context: Context) -> Proposal: ...

    def observe(self, experiment) -> None:
        """Called with every recorded experiment (a ledger row); backends that learn use it."""


# ---------------------------------------------------------------------------------------------------
# Resolution shared by the backends that talk to a model

MODEL_ENV = "AUTORESEARCH_MODEL"   # the model of any backend when --model is not given


@dataclass(frozen=True)
class Endpoint:
    """A backend's variables and defaults. Each value resolves the same way for every backend: the flag
    when given, else the environment variable, else the default; an empty value counts as unset."""

    base_url_env: str | None = None           # e.g. OPENAI_BASE_URL
    default_base_url: str | None = None
    key_env: str | None = None                # e.g. OPENAI_API_KEY
    other_credentials: tuple[str, ...] = ()   # variables a CLI accepts in place of the key
    default_model: str | None = None

    def model(self, flag: str | None) -> str | None:
        return _first(flag, MODEL_ENV, self.default_model)

    def base_url(self, flag: str | None) -> str | None:
        """The server's URL, without a trailing slash."""
        return (_first(flag, self.base_url_env, self.default_base_url) or "").rstrip("/") or None

    def key(self, flag: str | None = None) -> str | None:
        return _first(flag, self.key_env, None)

    def has_credentials(self) -> bool:
        """Whether the key or any other credential variable is set (read now: the CLIs read them when run)."""
        return any(os.environ.get(name) for name in (self.key_env, *self.other_credentials) if name)


def _first(flag: str | None, env: str | None, default: str | None) -> str | None:
    return flag or (os.environ.get(env) if env else None) or default


def as_int(value) -> int | None:
    """A JSON number that is an integer (true and false are not), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def as_float(value) -> float | None:
    """A JSON number as a float (true and false are not numbers), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)
