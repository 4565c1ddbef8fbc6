"""Any OpenAI-compatible chat-completions endpoint: OpenAI itself, Ollama, vLLM, a llama.cpp server.

    base URL  --base-url, else $OPENAI_BASE_URL, else https://api.openai.com/v1
              (Ollama: http://localhost:11434/v1, vLLM: http://localhost:8000/v1, llama.cpp: http://localhost:8080/v1)
    model     --model, else $AUTORESEARCH_MODEL (no default: local servers name their models differently)
    key       $OPENAI_API_KEY, sent as a Bearer token when set; required only by api.openai.com

The model answers with search/replace edits (see `edits.py`); the harness applies them to train.py
(a task's editable files: several are shown and edited by name).
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlparse

from . import http
from .base import AgentError, AgentUnavailable, Context, Endpoint, Proposal
from .edits import edit_instructions, proposal_from_reply

DEFAULT_BASE_URL = "https://api.openai.com/v1"
ENDPOINT = Endpoint(base_url_env="OPENAI_BASE_URL", default_base_url=DEFAULT_BASE_URL, key_env="OPENAI_API_KEY")


class OpenAIAgent:
    name = "openai"

    def __init__(self, workspace: Path | None = None, model: str | None = None, base_url: str | None = None, *,
                 api_key: str | None = None, temperature: float | None = 0.7, max_tokens: int | None = None,
                 timeout: float = 600.0, retries: int = 3, backoff: float = 2.0, check_timeout: float = 5.0):
        self.workspace = Path(workspace) if workspace is not None else None
        self.base_url = ENDPOINT.base_url(base_url)
        self.model = ENDPOINT.model(model)
        self.api_key = ENDPOINT.key(api_key)
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.check_timeout = check_timeout

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _is_openai(self) -> bool:
        return (urlparse(self.base_url).hostname or "").lower() == "api.openai.com"

    def check(self) -> None:
        if not self.model:
            raise AgentUnavailable("the openai agent has no model: pass --model or set AUTORESEARCH_MODEL "
                                   "(for example gpt-4.1, or the name of a model your local server serves)")
        if self._is_openai() and not self.api_key:
            raise AgentUnavailable(f"OPENAI_API_KEY is not set, and {self.base_url} needs it (for a local "
                                   "server, set OPENAI_BASE_URL or --base-url, e.g. http://localhost:11434/v1)")
        url = f"{self.base_url}/models"
        status = http.probe(url, self._headers(), timeout=self.check_timeout, what="the OpenAI-compatible server")
        if status in (401, 403):
            raise AgentUnavailable(f"{url} refused the API key (HTTP {status}): check OPENAI_API_KEY")
        # Anything else (200, or 404 from servers without a model list) means something is listening.

    def propose(self, context: Context) -> Proposal:
        if not self.model:
            raise AgentUnavailable("the openai agent has no model: pass --model or set AUTORESEARCH_MODEL")
        body: dict = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": edit_instructions(list(context.texts()))},
                {"role": "user", "content": context.prompt()},
            ],
        }
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        started = time.monotonic()
        data = http.post_json(f"{self.base_url}/chat/completions", body, self._headers(),
                              timeout=self.timeout, retries=self.retries, backoff=self.backoff)
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise AgentError(f"unexpected answer from {self.base_url}/chat/completions (no "
                             f"choices[0].message.content): {http.excerpt(str(data))!r}") from None
        if not isinstance(text, str) or not text.strip():
            raise AgentError(f"the model returned no text (finish_reason {choice.get('finish_reason')!r})")
        usage = data.get("usage") or {}
        cut_off = "the token limit" if choice.get("finish_reason") == "length" else None
        return proposal_from_reply(text, context, model=self.model, input_tokens=usage.get("prompt_tokens"),
                                   output_tokens=usage.get("completion_tokens"), seconds=time.monotonic() - started,
                                   cut_off=cut_off, served_model=data.get("model"))

    def observe(self, experiment) -> None:
        """Nothing to learn: every proposal starts from the ledger's history in the prompt."""
