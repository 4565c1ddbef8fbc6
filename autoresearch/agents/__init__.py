"""Agent backends, found by name. Each is one small module behind the interface in `base.py`;
no backend imports another (what several share: `base.py`, `http.py`, `edits.py`, `cli_tools.py`).

    optuna     offline default: TPE over the constants of train.py's hyperparameter block (no model, no network)
    openai     any OpenAI-compatible chat endpoint (Ollama, vLLM, llama.cpp server, OpenAI)
    anthropic  the Anthropic Messages API
    claude     Claude Code CLI, headless, allowed to edit train.py only (a task's editable files only)
    codex      Codex CLI (`codex exec`), in the workspace, everything read-only but train.py (a task's editable files)
    module:Class   your own backend: any importable class with the interface of `base.Agent`
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

from .base import CONFIG, REPLY, TRANSIENT, Agent, AgentError, AgentUnavailable, Context, Failure, Proposal

REGISTRY = {
    "optuna": "autoresearch.agents.optuna_search:OptunaAgent",
    "openai": "autoresearch.agents.openai_compat:OpenAIAgent",
    "anthropic": "autoresearch.agents.anthropic_api:AnthropicAgent",
    "claude": "autoresearch.agents.claude_code:ClaudeCodeAgent",
    "codex": "autoresearch.agents.codex_cli:CodexAgent",
}


def create(name: str, workspace: Path, model: str | None = None, base_url: str | None = None, **options) -> Agent:
    """Instantiate backend `name` for `workspace`; unknown names are a clear error. `options` (timeout,
    retries) go to the backends that take them; a backend without a request (optuna) ignores them."""
    if name not in REGISTRY and ":" not in name:
        raise ValueError(f"unknown agent {name!r} (known: {', '.join(REGISTRY)}; or your own as module:Class)")
    module, cls = REGISTRY.get(name, name).split(":")
    try:
        factory = getattr(importlib.import_module(module), cls)
    except ImportError as e:
        raise AgentUnavailable(f"agent {name!r} needs a package that is not installed: {e}") from None
    except AttributeError:
        raise AgentUnavailable(f"agent {name!r}: module {module} has no {cls}") from None
    accepted = inspect.signature(factory).parameters
    given = {k: v for k, v in options.items() if v is not None and k in accepted}
    return factory(workspace=Path(workspace), model=model, base_url=base_url, **given)


__all__ = ["CONFIG", "REPLY", "TRANSIENT", "Agent", "AgentError", "AgentUnavailable", "Context", "Failure", "Proposal",
           "REGISTRY", "create"]
