"""The embedded corpus: public-domain English text shipped inside the package (see NOTICE).

It makes a fresh machine with no network work: `autoresearch prepare` on the `cpu` profile reads the xz
files next to this module, cuts the text into ~2 KB documents at paragraph boundaries and assigns every
document to a split by a hash of its text, so the assignment never depends on file order.
"""

from __future__ import annotations

import hashlib
import lzma
from pathlib import Path
from typing import Iterator

CORPUS_DIR = Path(__file__).parent / "corpus"
TARGET_DOC_CHARS = 2000
VAL_PERCENT = 5    # documents whose hash falls in [0, 5) of 100 are validation
TEST_PERCENT = 5   # [5, 10) are a held-out test split that no keep/discard decision reads


def corpus_files() -> list[Path]:
    files = sorted(CORPUS_DIR.glob("*.txt.xz"))
    if not files:
        raise FileNotFoundError(f"embedded corpus missing from {CORPUS_DIR}: reinstall autoresearch")
    return files


def split_documents(text: str, target: int = TARGET_DOC_CHARS) -> Iterator[str]:
    """Greedy paragraphs-into-documents: close a document once it reaches `target` characters."""
    current: list[str] = []
    size = 0
    for paragraph in text.split("\n\n"):
        paragraph = paragraph.strip("\n")
        if not paragraph.strip():
            continue
        current.append(paragraph)
        size += len(paragraph) + 2
        if size >= target:
            yield "\n\n".join(current)
            current, size = [], 0
    if current:
        yield "\n\n".join(current)


def split_of(doc: str) -> str:
    bucket = int.from_bytes(hashlib.blake2b(doc.encode("utf-8"), digest_size=8).digest(), "big") % 100
    if bucket < VAL_PERCENT:
        return "val"
    if bucket < VAL_PERCENT + TEST_PERCENT:
        return "test"
    return "train"


def labelled_documents() -> dict[str, list[tuple[str, str]]]:
    """All documents of the embedded corpus as (source, text), by split ("train", "val", "test"); the
    source is the corpus file's name without its extensions (e.g. "milton")."""
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "val": [], "test": []}
    for path in corpus_files():
        text = lzma.decompress(path.read_bytes()).decode("utf-8")
        source = path.name.split(".")[0]
        for doc in split_documents(text):
            splits[split_of(doc)].append((source, doc))
    return splits


def embedded_documents() -> dict[str, list[str]]:
    """All documents of the embedded corpus, by split ("train", "val", "test")."""
    return {split: [doc for _, doc in docs] for split, docs in labelled_documents().items()}


def corpus_fingerprint() -> str:
    h = hashlib.sha256()
    for path in corpus_files():
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()
