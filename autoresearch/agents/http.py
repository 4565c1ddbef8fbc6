"""The small HTTP layer shared by the model-API backends: a JSON POST with retries, and a reachability probe.

Every failure is an AgentError carrying the status and the start of the body, so the loop's log says what the
server objected to, and a kind that tells the loop what to do (base.py):

    config      HTTP 4xx other than 408 and 429 (unknown model, rejected key, bad request)
    transient   HTTP 408, 429, 5xx; no answer within the timeout; a refused connection ("cannot connect");
                a connection the server accepted and then closed without answering (said so)
    reply       HTTP 2xx with a body that is not a JSON object

`retries` (default none: the loop that calls us owns the back-off) retries transient statuses and connection
failures, honouring a short `Retry-After`. A timeout is never retried here.
"""

from __future__ import annotations

import time

import requests

from .base import CONFIG, REPLY, TRANSIENT, AgentError, AgentUnavailable

RETRY_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))
MAX_RETRY_AFTER = 60.0   # seconds; a longer Retry-After is capped to this
EXCERPT_CHARS = 300


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """`text` on one line, cut to `limit` characters."""
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, min(float(value), MAX_RETRY_AFTER))
    except ValueError:
        return None  # an HTTP date: not worth parsing, fall back on our own backoff


def _dropped(error: requests.ConnectionError) -> bool:
    """Whether the server accepted the connection and then closed it (rather than refusing it)."""
    text = str(error)
    return "RemoteDisconnected" in text or "Connection aborted" in text or "ConnectionResetError" in text or \
        "closed connection without response" in text


def post_json(url: str, body: dict, headers: dict[str, str], *, timeout: float, retries: int = 0,
              backoff: float = 2.0) -> dict:
    """POST `body` as JSON and return the decoded JSON answer.

    Up to `retries` further attempts follow a transient status or a connection error, waiting backoff,
    2*backoff, 4*backoff... (or the server's Retry-After when it gives one). Raises AgentError otherwise.
    """
    attempt = 0
    while True:
        wait = backoff * (2 ** attempt)
        tried = f" (after {attempt + 1} attempts)" if attempt else ""
        try:
            response = requests.post(url, json=body, headers=headers, timeout=timeout)
        except requests.Timeout:
            raise AgentError(f"POST {url}: no answer within {timeout:g} s (--request-timeout)",
                             kind=TRANSIENT) from None
        except requests.ConnectionError as e:
            if attempt >= retries:
                what = ("the server accepted the connection and closed it without an answer" if _dropped(e)
                        else f"cannot connect ({excerpt(str(e), 200)})")
                raise AgentError(f"POST {url}: {what}{tried}", kind=TRANSIENT) from None
        except requests.RequestException as e:
            raise AgentError(f"POST {url}: {excerpt(str(e), 200)}", kind=TRANSIENT) from None
        else:
            status = response.status_code
            if status < 300:
                try:
                    data = response.json()
                except ValueError:
                    raise AgentError(f"POST {url}: HTTP {status} but the body is not JSON: "
                                     f"{excerpt(response.text)!r}", kind=REPLY, reply=response.text) from None
                if not isinstance(data, dict):
                    raise AgentError(f"POST {url}: expected a JSON object, got {excerpt(response.text)!r}",
                                     kind=REPLY, reply=response.text)
                return data
            if status not in RETRY_STATUSES or attempt >= retries:
                kind = TRANSIENT if status in RETRY_STATUSES else CONFIG
                raise AgentError(f"POST {url}: HTTP {status}{tried}: {excerpt(response.text)!r}", kind=kind,
                                 reply=response.text, retry_after=_retry_after(response))
            server_wait = _retry_after(response)
            if server_wait is not None:
                wait = server_wait
        attempt += 1
        if wait > 0:
            time.sleep(wait)


def probe(url: str, headers: dict[str, str], *, timeout: float = 5.0, what: str = "the server") -> int:
    """GET `url` and return the status code; AgentUnavailable (naming the URL) if nothing answers."""
    try:
        response = requests.get(url, headers=headers, timeout=timeout)
    except requests.Timeout:
        raise AgentUnavailable(f"{what} at {url} did not answer within {timeout:g} s") from None
    except requests.ConnectionError as e:
        if _dropped(e):
            raise AgentUnavailable(f"{what} at {url} accepted the connection and closed it without an answer") \
                from None
        raise AgentUnavailable(f"cannot reach {what} at {url}: {excerpt(str(e), 200)}") from None
    except requests.RequestException as e:
        raise AgentUnavailable(f"cannot reach {what} at {url}: {excerpt(str(e), 200)}") from None
    return response.status_code
