"""Agent backends, found by name. Each is one small module behind the interface in `base.py`;
no backend imports another (what several share: `base.py`, `http.py`, `edits.py`, `cli_tools.py`).

    optuna     offline default: TPE over the constants of train.py's hyperparameter block (no model, no network)
    openai     any OpenAI-compatible chat endpoint (Ollama, vLLM, llama.cpp server, OpenAI)
    anthropic  the Anthropic Messages API
    claude     Claude Code CLI, headless, allowed to edit train.py only
    codex      Codex CLI (`codex exec`), in the workspace
"""

from __future__ import annotations

import importlib
from pathlib import Path

from .base import Agent, AgentError, AgentUnavailable, Context, Failure, Proposal

REGISTRY = {
    "optuna": "autoresearch.agents.optuna_search:OptunaAgent",
    "openai": "autoresearch.agents.openai_compat:OpenAIAgent",
    "anthropic": "autoresearch.agents.anthropic_api:AnthropicAgent",
    "claude": "autoresearch.agents.claude_code:ClaudeCodeAgent",
    "codex": "autoresearch.agents.codex_cli:CodexAgent",
}


def create(name: str, workspace: Path, model: str | None = None, base_url: str | None = None) -> Agent:
    """Instantiate backend `name` for `workspace`; unknown names are a clear error."""
    if name not in REGISTRY:
        raise ValueError(f"unknown agent {name!r} (known: {', '.join(REGISTRY)})")
    module, cls = REGISTRY[name].split(":")
    try:
        factory = getattr(importlib.import_module(module), cls)
    except ImportError as e:
        raise AgentUnavailable(f"agent {name!r} needs a package that is not installed: {e}") from None
    return factory(workspace=Path(workspace), model=model, base_url=base_url)


__all__ = ["Agent", "AgentError", "AgentUnavailable", "Context", "Failure", "Proposal", "REGISTRY", "create"]
