"""Reading what train.py wrote to its log: the summary block it reports, the crash class, the last lines.

Nothing read here decides a verdict on its own: the summary is recorded as reported by train.py, the crash
class only names a failure the parent already saw (a non-zero exit, no exported model).
"""

from __future__ import annotations

import re
import shutil
import signal
from pathlib import Path

LOW_DISK_BYTES = 8 * 2**20


def parse_summary(log: str) -> dict[str, str]:
    """The `key: value` lines after the last `---` line of a train.py log: what train.py reports about itself
    (steps, params, MFU), recorded as reported; no decision and no harness figure is taken from it."""
    if "\n---\n" not in log:
        return {}
    block = log.rsplit("\n---\n", 1)[1]
    return {k.strip(): v.strip() for k, v in (l.split(":", 1) for l in block.splitlines() if ":" in l)}


def number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


CRASH_PATTERNS = [
    ("disk-full", re.compile(r"No space left on device|database or disk is full", re.I)),
    ("syntax", re.compile(r"^(SyntaxError|IndentationError|TabError)\b", re.M)),
    ("import", re.compile(r"^(ModuleNotFoundError|ImportError)\b", re.M)),
    ("nan", re.compile(r"^FAIL: training loss", re.M)),
    ("oom", re.compile(r"OutOfMemoryError|out of memory|^MemoryError\b", re.M | re.I)),
    ("export", re.compile(r"SubmissionError: export", re.M)),
]


def classify_crash(log: str, returncode: int, root: Path | None = None) -> str:
    if root is not None and shutil.disk_usage(root).free < LOW_DISK_BYTES:
        return "disk-full"  # the log itself may not have been writable
    for name, pattern in CRASH_PATTERNS:
        if pattern.search(log):
            return name
    if returncode < 0:
        return "oom" if returncode == -signal.SIGKILL else "signal"
    if "Traceback (most recent call last)" in log:
        return "exception"
    return "no-submit" if returncode == 0 else "exit"


def log_tail(path: Path, lines: int = 20, *, blank: bool = False, chars: int | None = 4000) -> str:
    """The last lines of a log (progress lines written with \\r count as lines). An error excerpt (the default)
    skips blank lines and keeps at most `chars` characters; `autoresearch show` asks for the lines as written."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    kept = [line for line in text.splitlines() if blank or line.strip()]  # splitlines breaks at \r too
    tail = "\n".join(kept[-lines:])
    return tail if chars is None else tail[-chars:]
