"""The Anthropic Messages API.

    base URL  --base-url, else $ANTHROPIC_BASE_URL, else https://api.anthropic.com
    model     --model, else $AUTORESEARCH_MODEL, else DEFAULT_MODEL
    key       $ANTHROPIC_API_KEY (always required)

The model answers with search/replace edits (see `edits.py`); the harness applies them to train.py
(a task's editable files: several are shown and edited by name).
"""

from __future__ import annotations

import time
from pathlib import Path

from . import http
from .base import AgentError, AgentUnavailable, Context, Endpoint, Proposal
from .edits import edit_instructions, proposal_from_reply

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_MODEL = "claude-sonnet-4-5"
API_VERSION = "2023-06-01"
ENDPOINT = Endpoint(base_url_env="ANTHROPIC_BASE_URL", default_base_url=DEFAULT_BASE_URL, key_env="ANTHROPIC_API_KEY",
                    default_model=DEFAULT_MODEL)


class AnthropicAgent:
    name = "anthropic"

    def __init__(self, workspace: Path | None = None, model: str | None = None, base_url: str | None = None, *,
                 api_key: str | None = None, max_tokens: int = 8192, temperature: float | None = None,
                 timeout: float = 600.0, retries: int = 3, backoff: float = 2.0, check_timeout: float = 5.0):
        self.workspace = Path(workspace) if workspace is not None else None
        self.base_url = ENDPOINT.base_url(base_url)
        self.model = ENDPOINT.model(model)
        self.api_key = ENDPOINT.key(api_key)
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.check_timeout = check_timeout

    def _headers(self) -> dict[str, str]:
        return {"x-api-key": self.api_key or "", "anthropic-version": API_VERSION,
                "content-type": "application/json"}

    def check(self) -> None:
        if not self.api_key:
            raise AgentUnavailable("ANTHROPIC_API_KEY is not set: the anthropic agent needs an API key")
        url = f"{self.base_url}/v1/models"
        status = http.probe(url, self._headers(), timeout=self.check_timeout, what="the Anthropic API")
        if status in (401, 403):
            raise AgentUnavailable(f"{url} refused the API key (HTTP {status}): check ANTHROPIC_API_KEY")
        # Any other status means the server is there; checking costs no tokens.

    def propose(self, context: Context) -> Proposal:
        if not self.api_key:
            raise AgentUnavailable("ANTHROPIC_API_KEY is not set: the anthropic agent needs an API key")
        body: dict = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "system": edit_instructions(list(context.texts())),
            "messages": [{"role": "user", "content": context.prompt()}],
        }
        if self.temperature is not None:
            body["temperature"] = self.temperature
        started = time.monotonic()
        data = http.post_json(f"{self.base_url}/v1/messages", body, self._headers(),
                              timeout=self.timeout, retries=self.retries, backoff=self.backoff)
        content = data.get("content")
        if not isinstance(content, list):
            raise AgentError(f"unexpected answer from {self.base_url}/v1/messages (no content list): "
                             f"{http.excerpt(str(data))!r}")
        text = "".join(part.get("text", "") for part in content
                       if isinstance(part, dict) and part.get("type") == "text")
        if not text.strip():
            raise AgentError(f"the model returned no text (stop_reason {data.get('stop_reason')!r})")
        usage = data.get("usage") or {}
        cut_off = f"max_tokens={self.max_tokens}" if data.get("stop_reason") == "max_tokens" else None
        return proposal_from_reply(text, context, model=self.model, input_tokens=usage.get("input_tokens"),
                                   output_tokens=usage.get("output_tokens"), seconds=time.monotonic() - started,
                                   cut_off=cut_off, served_model=data.get("model"))

    def observe(self, experiment) -> None:
        """Nothing to learn: every proposal starts from the ledger's history in the prompt."""
