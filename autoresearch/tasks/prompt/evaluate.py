"""The prompt task's evaluator (frozen; run by the harness in a fresh, sandboxed process after the run, with
the network: task.toml's evaluate_network).

For the split it is asked for ($AUTORESEARCH_SPLIT: val, or test for kept results) it sends every hidden
question to the grader, an OpenAI-compatible endpoint:

    POST $AUTORESEARCH_GRADER_BASE_URL/chat/completions
         model $AUTORESEARCH_GRADER_MODEL, temperature 0, at most MAX_TOKENS tokens,
         messages: the candidate's prompt.txt as the system message, the question as the user message
         Authorization: Bearer $AUTORESEARCH_GRADER_API_KEY (only when set)

The answer rule (fixed): the reply, stripped of surrounding whitespace and then of one trailing period,
must be exactly the expected integer. "42" is right; "42 minutes", "The answer is 42." and "**42**" are not.
The metric is the fraction of questions answered right (accuracy, higher is better); `bare` counts the
replies that were an integer at all (right or wrong), `correct` the right ones.

The prompt is read from the harness's copy of the candidate's files ($AUTORESEARCH_CANDIDATE_DIR), never
from what the run left: an empty prompt, one over MAX_CHARS or one that is not UTF-8 is invalid.

A grader that cannot answer (refused connection, timeout, HTTP error after RETRIES retries of a 5xx, a
reply that is not a chat completion) is not the candidate's fault: the evaluator exits non-zero saying so,
and the harness stops the run, records nothing and leaves the edit in the tree. Writes its JSON result to
$AUTORESEARCH_RESULT.
"""

import http.client
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

MAX_CHARS = 4000      # the longest prompt (the same limit as check.py)
MAX_TOKENS = 256      # the longest reply the grader may write
TIMEOUT = 60          # seconds for one request
RETRIES = 2           # more tries of a request that timed out, failed to connect or got a 5xx
WORKERS = 4           # requests in flight at once
INTEGER = re.compile(r"-?\d+")


class GraderDown(Exception):
    """The grader did not give a usable answer: the task cannot be scored now (not the candidate's fault)."""


def ask(url: str, model: str, key: str, system: str, question: str) -> str:
    body = {"model": model, "temperature": 0, "max_tokens": MAX_TOKENS,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}]}
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    for attempt in range(RETRIES + 1):
        request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                text = response.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as e:
            why = f"HTTP {e.code} from {url}: {e.read().decode('utf-8', errors='replace')[:200]}"
            if e.code < 500:  # a refused key, an unknown model, a wrong path: retrying changes nothing
                raise GraderDown(why) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:  # refused, timed out, dropped
            why = f"{url} cannot be reached: {getattr(e, 'reason', e)}"
        else:
            try:
                content = json.loads(text)["choices"][0]["message"]["content"]
            except (ValueError, KeyError, IndexError, TypeError):
                raise GraderDown(f"{url} did not answer with a chat completion: {text[:200]!r}") from None
            return content if isinstance(content, str) else ""
        if attempt == RETRIES:
            raise GraderDown(why)
        time.sleep(2 ** attempt)
    raise AssertionError("unreachable")


def answer_of(reply: str) -> str:
    """The answer rule: surrounding whitespace, then one trailing period, removed."""
    text = reply.strip()
    return text[:-1] if text.endswith(".") else text


def read_prompt() -> tuple[str | None, str]:
    path = os.path.join(os.environ["AUTORESEARCH_CANDIDATE_DIR"], "prompt.txt")
    try:
        text = open(path, encoding="utf-8").read()
    except (OSError, UnicodeDecodeError) as e:
        return None, f"prompt.txt cannot be read as UTF-8: {e}"
    if not text.strip():
        return None, "prompt.txt is empty"
    if len(text) > MAX_CHARS:
        return None, f"prompt.txt has {len(text)} characters; the limit is {MAX_CHARS}"
    return text, ""


def evaluate(split: str) -> dict:
    base, model = os.environ.get("AUTORESEARCH_GRADER_BASE_URL", ""), os.environ.get("AUTORESEARCH_GRADER_MODEL", "")
    if not base or not model:
        sys.exit("AUTORESEARCH_GRADER_BASE_URL and AUTORESEARCH_GRADER_MODEL must be set (the grader's endpoint)")
    prompt, why = read_prompt()
    if prompt is None:
        return {"valid": False, "reason": why}
    with open(os.path.join(os.environ["AUTORESEARCH_TASK_DATA"], "hidden", f"{split}.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    url, key = base.rstrip("/") + "/chat/completions", os.environ.get("AUTORESEARCH_GRADER_API_KEY", "")
    pool = ThreadPoolExecutor(WORKERS)
    try:
        replies = list(pool.map(lambda row: ask(url, model, key, prompt, row["question"]), rows))
    except GraderDown as e:
        print(f"the grader failed: {e}", file=sys.stderr, flush=True)
        os._exit(1)  # now: the requests still in flight would only retry a grader that is down
    pool.shutdown()
    answers = [answer_of(reply) for reply in replies]
    correct = sum(a == row["answer"] for a, row in zip(answers, rows))
    return {"valid": True, "metric": correct / len(rows), "reason": f"{correct} of {len(rows)} right",
            "metrics": {"correct": correct, "bare": sum(bool(INTEGER.fullmatch(a)) for a in answers),
                        "questions": len(rows)}}


if __name__ == "__main__":
    result = evaluate(os.environ.get("AUTORESEARCH_SPLIT", "val"))
    path = os.environ["AUTORESEARCH_RESULT"]
    with open(path + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(path + ".tmp", path)
