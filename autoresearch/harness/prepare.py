"""`autoresearch prepare`: data and tokenizer for one profile, into the cache, once.

    sources (embedded corpus | climbmix shards | TinyStories)  ->  documents by split
    train documents  ->  BPE tokenizer (rustbpe -> tiktoken JSON) + token-bytes table
    every split      ->  <split>.bin (uint16 tokens, BOS before each document) + <split>.idx.npy
    fingerprints     ->  manifest.json   (written last: its presence means "prepared")

Running it again finds the manifest and does nothing. Nothing is ever half-written in place: every file
is written under a temporary name and renamed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from . import embedded
from .paths import prepared_dir, raw_dir
from .profiles import Profile
from .tokenizer import Tokenizer, train_tokenizer

MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
DATA_FORMAT = 2               # bump when the prepared layout or document cutting changes (2: <split>.src.npy)
TOKENIZER_MAX_CHARS = 1_000_000_000
TOKENIZER_DOC_CAP = 10_000


@dataclass
class Sources:
    """Documents of every split, as re-iterable callables (large sources are streamed twice)."""

    splits: dict[str, Callable[[], Iterable[str]]]
    fingerprint: str
    sources: dict[str, str | list[str]]   # per split: one source name, or one per document (same order)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def data_spec(profile: Profile) -> dict:
    """What the prepared data depends on; a manifest with another spec is stale."""
    return {
        "format": DATA_FORMAT,
        "dataset": profile.dataset,
        "vocab_size": profile.vocab_size,
        "num_shards": profile.num_shards if profile.dataset == "climbmix" else 0,
    }


def load_manifest(profile: Profile) -> dict | None:
    path = prepared_dir(profile.name) / MANIFEST
    if not path.exists():
        return None
    manifest = json.loads(path.read_text())
    return manifest if manifest.get("spec") == data_spec(profile) else None


# ---------------------------------------------------------------------------
# Sources

def embedded_sources() -> Sources:
    labelled = embedded.labelled_documents()
    docs = {s: [text for _, text in labelled[s]] for s in SPLITS}
    return Sources({s: (lambda s=s: docs[s]) for s in SPLITS}, embedded.corpus_fingerprint(),
                   {s: [source for source, _ in labelled[s]] for s in SPLITS})


def _alternate(docs: Iterable[str], keep: int) -> Iterator[str]:
    """Every other document: the held-out file is shared by val (even) and test (odd)."""
    for i, doc in enumerate(docs):
        if i % 2 == keep:
            yield doc


def climbmix_sources(profile: Profile, progress: bool) -> Sources:
    from . import download

    train, val = download.download_climbmix(raw_dir("climbmix"), profile.num_shards, progress=progress)
    names = ",".join(p.name for p in [*train, val])
    return Sources(
        {
            "train": lambda: download.iter_parquet_texts(train),
            "val": lambda: _alternate(download.iter_parquet_texts([val]), 0),
            "test": lambda: _alternate(download.iter_parquet_texts([val]), 1),
        },
        hashlib.sha256(names.encode()).hexdigest(),
        {"train": "climbmix training shards", "val": f"climbmix {val.name} (even documents)",
         "test": f"climbmix {val.name} (odd documents)"},
    )


def tinystories_sources(progress: bool) -> Sources:
    from . import download

    train, valid = download.download_tinystories(raw_dir("tinystories"), progress=progress)
    return Sources(
        {
            "train": lambda: download.iter_tinystories_docs(train),
            "val": lambda: _alternate(download.iter_tinystories_docs(valid), 0),
            "test": lambda: _alternate(download.iter_tinystories_docs(valid), 1),
        },
        hashlib.sha256(f"{train.name}:{train.stat().st_size},{valid.name}:{valid.stat().st_size}".encode()).hexdigest(),
        {"train": f"TinyStories {train.name}", "val": f"TinyStories {valid.name} (even stories)",
         "test": f"TinyStories {valid.name} (odd stories)"},
    )


def get_sources(profile: Profile, progress: bool) -> Sources:
    if profile.dataset == "embedded":
        return embedded_sources()
    if profile.dataset == "climbmix":
        return climbmix_sources(profile, progress)
    if profile.dataset == "tinystories":
        return tinystories_sources(progress)
    raise ValueError(f"unknown dataset {profile.dataset!r}")


# ---------------------------------------------------------------------------
# Tokenization into memmaps

def _capped(docs: Iterable[str], max_chars: int, doc_cap: int) -> Iterator[str]:
    total = 0
    for doc in docs:
        doc = doc[:doc_cap]
        total += len(doc)
        yield doc
        if total >= max_chars:
            return


def _batches(docs: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def tokenize_split(tok: Tokenizer, docs: Iterable[str], out_dir: Path, split: str, progress,
                   sources: str | list[str] = "") -> dict:
    """Write <split>.bin, <split>.idx.npy and <split>.src.npy (the source of each document, an index into
    the manifest's `sources` of the split); return counts and the sha256 of the tokens."""
    bin_path, idx_path = out_dir / f"{split}.bin", out_dir / f"{split}.idx.npy"
    tmp_bin = bin_path.with_name(bin_path.name + ".tmp")
    offsets = [0]
    digest = hashlib.sha256()
    nbytes = 0
    threads = max(1, os.cpu_count() or 1)
    with open(tmp_bin, "wb") as f:
        for batch in _batches(docs, 1024):
            rows = tok.encode(batch, prepend=tok.bos_token_id, num_threads=threads)
            for row in rows:
                offsets.append(offsets[-1] + len(row))
            arr = np.fromiter((t for row in rows for t in row), dtype=np.uint16, count=sum(map(len, rows)))
            f.write(arr.tobytes())
            digest.update(arr.tobytes())
            nbytes += sum(len(d.encode("utf-8")) for d in batch)
            progress(len(batch))
    if len(offsets) == 1:
        tmp_bin.unlink()
        raise RuntimeError(f"the {split} split is empty: the source data is incomplete")
    np.save(idx_path.with_name(idx_path.name + ".tmp.npy"), np.asarray(offsets, dtype=np.int64))
    idx_path.with_name(idx_path.name + ".tmp.npy").replace(idx_path)
    tmp_bin.replace(bin_path)
    n_docs = len(offsets) - 1
    labels = [sources] * n_docs if isinstance(sources, str) else list(sources)
    if len(labels) != n_docs:
        raise RuntimeError(f"the {split} split has {n_docs} documents but {len(labels)} source labels")
    names = sorted(set(labels))
    index = {name: i for i, name in enumerate(names)}
    ids = np.fromiter((index[name] for name in labels), dtype=np.uint16, count=n_docs)
    src_path = out_dir / f"{split}.src.npy"
    np.save(src_path.with_name(src_path.name + ".tmp.npy"), ids)
    src_path.with_name(src_path.name + ".tmp.npy").replace(src_path)
    lengths = np.diff(np.asarray(offsets, dtype=np.int64))
    per_source = {name: {"documents": int((ids == i).sum()), "tokens": int(lengths[ids == i].sum())}
                  for i, name in enumerate(names)}
    return {"documents": n_docs, "tokens": offsets[-1], "text_bytes": nbytes, "sha256": digest.hexdigest(),
            "sources": names, "per_source": per_source}


def _progress_bar(enabled: bool):
    """A rich progress bar on a terminal; None (a summary line per split instead) otherwise."""
    if not (enabled and sys.stderr.isatty()):
        return None
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), TextColumn("{task.completed:,} docs"),
                    TimeElapsedColumn(), console=Console(stderr=True))


def prepare(profile: Profile, *, progress: bool = True, force: bool = False) -> dict:
    """Prepare data and tokenizer for `profile`; return its manifest. Idempotent."""
    out = prepared_dir(profile.name)
    if not force and (manifest := load_manifest(profile)) is not None:
        log(f"prepare: {profile.name} already prepared at {out} (nothing to do)")
        return manifest
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    sources = get_sources(profile, progress)

    log(f"prepare: training a {profile.vocab_size}-token BPE tokenizer on the train split")
    t_tok = time.time()
    tok = train_tokenizer(
        _capped(sources.splits["train"](), TOKENIZER_MAX_CHARS, TOKENIZER_DOC_CAP), profile.vocab_size, out
    )
    log(f"prepare: tokenizer trained in {time.time() - t_tok:.1f}s")

    stats = {}
    bar = _progress_bar(progress)
    with bar if bar is not None else contextlib.nullcontext():
        for split in SPLITS:
            if bar is not None:
                task = bar.add_task(f"tokenizing {split}", total=None)
                advance = lambda n, task=task: bar.advance(task, n)
            else:
                advance = lambda n: None
            stats[split] = tokenize_split(tok, sources.splits[split](), out, split, advance,
                                          sources.sources.get(split, ""))
            log(f"prepare: {split}: {stats[split]['documents']:,} documents, {stats[split]['tokens']:,} tokens")

    manifest = {
        "profile": profile.name,
        "spec": data_spec(profile),
        "source_fingerprint": sources.fingerprint,
        "tokenizer_fingerprint": tok.fingerprint(),
        "data_fingerprint": hashlib.sha256(
            json.dumps({s: stats[s]["sha256"] for s in SPLITS}, sort_keys=True).encode()
        ).hexdigest(),
        "splits": stats,
        "seconds": round(time.time() - t0, 1),
    }
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(out / MANIFEST)
    log(f"prepare: done in {manifest['seconds']}s -> {out}")
    return manifest


def require_prepared(profile: Profile) -> tuple[Path, dict]:
    """The prepared directory and manifest, or a clear error telling the user what to run."""
    manifest = load_manifest(profile)
    if manifest is None:
        raise FileNotFoundError(
            f"no prepared data for profile {profile.name!r} in {prepared_dir(profile.name)}: "
            "run `autoresearch prepare` in the workspace first"
        )
    return prepared_dir(profile.name), manifest


# ---------------------------------------------------------------------------
# What the evaluator scores

SCORED_SPLITS = ("val", "test")


def scored_composition(profile: Profile, split: str, metric_version: int) -> dict[str, int] | None:
    """Tokens the evaluator scores in `split`, per source (targets that are text; BOS excluded), as the
    metric version cuts them; None where it cannot be told (version 1, or data prepared before sources
    were recorded)."""
    from .loader import mixed_eval_rows

    data_dir, manifest = require_prepared(profile)
    src_path = data_dir / f"{split}.src.npy"
    names = manifest["splits"][split].get("sources")
    if metric_version != 2 or not src_path.exists() or not names:
        return None
    tok = Tokenizer.from_directory(data_dir)
    bos = tok.bos_token_id
    B, T = profile.eval_batch_size, profile.max_seq_len
    steps = max(1, profile.eval_tokens // (B * T))
    source_ids = np.load(src_path)
    counts = np.zeros(len(names), dtype=np.int64)
    for done, (rows, owners) in enumerate(mixed_eval_rows(data_dir, bos, B, T + 1, split, owners=True), 1):
        text = rows[:, 1:] != bos
        counts += np.bincount(source_ids[owners[:, 1:][text]], minlength=len(names))
        if done == steps:
            break
    return {name: int(n) for name, n in zip(names, counts)}


def describe_scoring(profile: Profile, metric_version: int) -> list[str]:
    """One line per scored split: how its rows are chosen and what they hold, per source."""
    how = {1: "documents in file order (metric 1, a biased sample: init a new workspace for metric 2)",
           2: "row-sized pieces of the documents in content-hash order, each source in proportion to its "
              "share (metric 2)"}.get(metric_version, "?")
    lines = [f"scored: {profile.eval_tokens:,} tokens per split, {how}"]
    for split in SCORED_SPLITS:
        comp = scored_composition(profile, split, metric_version)
        if comp is None:
            lines.append(f"  {split}: composition not known (prepared before sources were recorded: "
                         "`autoresearch prepare --force` records them)" if metric_version == 2 else
                         f"  {split}: composition not computed for metric 1")
            continue
        total = sum(comp.values()) or 1
        parts = ", ".join(f"{name} {n:,} ({100 * n / total:.0f}%)" for name, n in comp.items())
        lines.append(f"  {split}: {parts}")
    return lines
