"""Downloading the two public datasets the network profiles train on.

* climbmix: parquet shards of ``karpathy/climbmix-400b-shuffle`` (a ``text`` column per row). Training
  uses shards 0..n-1; validation always uses the pinned last shard, ``shard_06542.parquet``.
* TinyStories: the two plain-text files of ``roneneldan/TinyStories`` (V2, GPT-4 generated), stories
  separated by a line ``<|endoftext|>``.

Every file goes through one downloader: an existing file is skipped, a new one is streamed into a
temporary file beside its target, validated, then renamed into place atomically, so the destination
never holds a partial file. Failures are retried with exponential backoff (client errors other than
408/429 are final). When no attempt could even connect, :class:`NetworkUnavailable` says so plainly and
points at the offline ``cpu`` profile. Base URLs can be pointed at a mirror with environment variables.
"""

from __future__ import annotations

import codecs
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator

import pyarrow.parquet as pq
import requests

CLIMBMIX_URL = "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main"
CLIMBMIX_ENV = "AUTORESEARCH_CLIMBMIX_URL"
MAX_SHARD = 6542
VAL_SHARD = 6542

TINYSTORIES_URL = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main"
TINYSTORIES_ENV = "AUTORESEARCH_TINYSTORIES_URL"
TINYSTORIES_FILES = ("TinyStoriesV2-GPT4-train.txt", "TinyStoriesV2-GPT4-valid.txt")
STORY_SEPARATOR = "<|endoftext|>"

_CHUNK = 1 << 20
_TIMEOUT = (10, 60)  # (connect, read) seconds


class DownloadError(RuntimeError):
    """One or more files could not be downloaded after all attempts."""

    def __init__(self, message: str, failed: list[str] | None = None):
        super().__init__(message)
        self.failed = failed or []


class NetworkUnavailable(DownloadError):
    """No attempt could reach the server at all (DNS failure, refused, unreachable)."""


class _Failure(Exception):
    """Internal: one file failed for good; remembers whether every attempt was a connection error."""

    def __init__(self, name: str, error: BaseException, offline: bool):
        super().__init__(f"{name}: {error}")
        self.name, self.error, self.offline = name, error, offline


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


class _Reporter:
    """Progress of a batch of files: a rich bar on a terminal, one line per finished file otherwise."""

    def __init__(self, label: str, total: int, enabled: bool):
        self.total, self.done, self.nbytes = total, 0, 0
        self.lock = threading.Lock()
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[size]}"), TimeElapsedColumn(),
                                console=Console(stderr=True))
            self.task = self.bar.add_task(label, total=total, size="0 B")
            self.bar.start()
        self.plain = enabled and self.bar is None

    def add_bytes(self, n: int) -> None:
        with self.lock:
            self.nbytes += n
            if self.bar is not None:
                self.bar.update(self.task, size=_human(self.nbytes))

    def finished(self, path: Path, downloaded: bool) -> None:
        with self.lock:
            self.done += 1
            if self.bar is not None:
                self.bar.update(self.task, advance=1)
            elif self.plain and downloaded:
                size = _human(path.stat().st_size)
                print(f"downloaded {path.name} ({size}) [{self.done}/{self.total}]", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _human(n: float) -> str:
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("kB", "MB", "GB"):
        n /= 1000
        if n < 1000 or unit == "GB":
            break
    return f"{n:.1f} {unit}"


def _check_parquet(path: Path) -> None:
    with open(path, "rb") as f:
        names = pq.ParquetFile(f).schema_arrow.names
    if "text" not in names:
        raise ValueError(f"parquet file has no 'text' column (columns: {names})")


def _check_text(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(64 * 1024)
    if not head:
        raise ValueError("text file is empty")
    codecs.getincrementaldecoder("utf-8")().decode(head, final=False)  # raises on invalid UTF-8


def _fetch(url: str, target: Path, check: Callable[[Path], None], attempts: int, backoff: float,
           report: _Reporter) -> bool:
    """Download url to target atomically, with retries. Returns False if target already existed."""
    if target.exists():
        return False
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    offline, error = True, None
    for attempt in range(1, max(1, attempts) + 1):
        try:
            with requests.get(url, stream=True, timeout=_TIMEOUT) as resp:
                resp.raise_for_status()
                with open(tmp, "wb") as f:
                    for chunk in resp.iter_content(_CHUNK):
                        f.write(chunk)
                        report.add_bytes(len(chunk))
            check(tmp)
            os.replace(tmp, target)
            return True
        except Exception as exc:  # noqa: BLE001 - every failure is retried or reported
            error = exc
            offline = offline and isinstance(exc, requests.ConnectionError)
            status = exc.response.status_code if isinstance(exc, requests.HTTPError) and exc.response is not None else None
            if status is not None and 400 <= status < 500 and status not in (408, 429):
                break  # a client error will not go away by asking again
        finally:
            tmp.unlink(missing_ok=True)  # gone already after a successful rename
        if attempt < attempts:
            time.sleep(backoff * 2 ** (attempt - 1))
    raise _Failure(target.name, error, offline)


def _fetch_all(jobs: list[tuple[str, Path]], check: Callable[[Path], None], label: str, *, workers: int,
               attempts: int, backoff: float, progress: bool, base_url: str, env: str) -> None:
    """Run _fetch over (url, target) jobs in parallel; raise DownloadError/NetworkUnavailable on failure."""
    report = _Reporter(label, len(jobs), progress)
    failures: list[_Failure] = []

    def one(job: tuple[str, Path]) -> None:
        url, target = job
        try:
            report.finished(target, _fetch(url, target, check, attempts, backoff, report))
        except _Failure as f:
            failures.append(f)

    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            list(pool.map(one, jobs))
    finally:
        report.close()
    if not failures:
        return
    failures.sort(key=lambda f: f.name)
    names = [f.name for f in failures]
    listed = ", ".join(names[:10]) + (f", ... (+{len(names) - 10} more)" if len(names) > 10 else "")
    last = failures[-1].error
    if all(f.offline for f in failures):
        raise NetworkUnavailable(
            f"could not connect to {base_url} ({len(names)} file(s): {listed}): {last}\n"
            f"The {label} dataset needs network access. Use the `cpu` profile (embedded corpus, works "
            f"offline), or set {env} to a reachable mirror.", names)
    raise DownloadError(f"failed to download {len(names)} file(s) from {base_url}: {listed}; last error: {last}",
                        names)


def download_climbmix(dest: Path, num_shards: int, *, workers: int = 8, base_url: str | None = None,
                      attempts: int = 5, backoff: float = 1.0, progress: bool = True) -> tuple[list[Path], Path]:
    """Fetch training shards 0..num_shards-1 plus the pinned validation shard into dest.

    Returns (sorted training shard paths, validation shard path). Existing files are not fetched again.
    """
    base = (base_url or os.environ.get(CLIMBMIX_ENV) or CLIMBMIX_URL).rstrip("/")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    train = [dest / shard_name(i) for i in range(max(0, min(num_shards, MAX_SHARD)))]
    val = dest / shard_name(VAL_SHARD)
    jobs = [(f"{base}/{p.name}", p) for p in [*train, val]]
    _fetch_all(jobs, _check_parquet, "climbmix", workers=workers, attempts=attempts, backoff=backoff,
               progress=progress, base_url=base, env=CLIMBMIX_ENV)
    return train, val


def iter_parquet_texts(paths: Iterable[Path], doc_cap: int | None = None) -> Iterator[str]:
    """Yield the `text` column of each parquet file, one row group at a time, cut to doc_cap chars."""
    for path in paths:
        with open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            for group in range(pf.num_row_groups):
                for text in pf.read_row_group(group, columns=["text"]).column("text").to_pylist():
                    if text is None:
                        continue
                    yield text[:doc_cap] if doc_cap is not None else text


def download_tinystories(dest: Path, *, base_url: str | None = None, attempts: int = 5, backoff: float = 1.0,
                         progress: bool = True) -> tuple[Path, Path]:
    """Fetch the TinyStories V2 train and valid text files into dest; returns (train, valid)."""
    base = (base_url or os.environ.get(TINYSTORIES_ENV) or TINYSTORIES_URL).rstrip("/")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    train, valid = (dest / name for name in TINYSTORIES_FILES)
    _fetch_all([(f"{base}/{p.name}", p) for p in (train, valid)], _check_text, "TinyStories", workers=2,
               attempts=attempts, backoff=backoff, progress=progress, base_url=base, env=TINYSTORIES_ENV)
    return train, valid


def iter_tinystories_docs(path: Path) -> Iterator[str]:
    """Yield the stories of a TinyStories file (separated by `<|endoftext|>` lines), streaming."""
    lines: list[str] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip() == STORY_SEPARATOR:
                story = "".join(lines).strip()
                if story:
                    yield story
                lines = []
            else:
                lines.append(line)
    story = "".join(lines).strip()
    if story:
        yield story
