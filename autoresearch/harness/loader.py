"""Token rows for training and evaluation: BOS-aligned best-fit packing that drops nothing.

A prepared split is `<split>.bin` (uint16 tokens, documents back to back, each opening with BOS) and
`<split>.idx.npy` (int64 document start offsets, n_docs + 1 of them, the last one the token count).

    DocumentStream   the documents of one split, one after another: shuffled afresh each epoch with
                     `np.random.default_rng(seed + epoch)` and looping forever (training), or in file
                     order for one pass (evaluation)
    BestFitPacker    fills rows of `row_len` tokens from a buffer of documents
    make_dataloader  train split only: yields (inputs, targets, epoch) as (B, T) int64 tensors
    eval_batches     the evaluator's rows, by metric version (settings.METRIC_VERSION):
                       1  iter_eval_rows: file order, best-fit packed (biased toward the first sources)
                       2  mixed_eval_rows: documents in a content-hash order that mixes every source,
                          cut into rows in sequence (each row opens with BOS)

Packing a row: while space remains, place the LONGEST buffered document that fits in it whole. When no
document fits, the SHORTEST one is cut: its head fills the row to the end and its tail goes back into
the buffer with a BOS put in front of it. So every row and every buffered piece starts with BOS, no
row carries padding, and every token of the split lands in some row (only the tokens of a final,
incomplete evaluation batch are left over, and `BestFitPacker.leftover()` hands those back too).

The buffer keeps its pieces in FIFO buckets keyed by length, plus a sorted list of the lengths that
occur; "longest that fits" and "shortest" are then a bisect and an index, not a scan of the buffer.
Pieces are views into the memory-mapped token file (a cut piece is a view plus a "needs BOS" flag), so
no document is copied until its tokens are written into a row.
"""

from __future__ import annotations

import hashlib
import heapq
from bisect import bisect_right, insort
from collections import deque
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

_PREPARE_HINT = "run `autoresearch prepare` first"
_TRAIN_ONLY = "the training loader reads the train split only; validation data is scored by the harness"
_CHUNK = 4096  # documents whose offsets are looked up at once


def open_split(data_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The tokens (read-only uint16 memmap view) and document offsets of a prepared split."""
    data_dir = Path(data_dir)
    bin_path, idx_path = data_dir / f"{split}.bin", data_dir / f"{split}.idx.npy"
    for path in (bin_path, idx_path):
        if not path.is_file():
            raise FileNotFoundError(f"prepared data not found: {path} does not exist; {_PREPARE_HINT}")
    offsets = np.load(idx_path)
    if bin_path.stat().st_size == 0:
        tokens = np.zeros(0, dtype=np.uint16)
    else:
        tokens = np.asarray(np.memmap(bin_path, dtype=np.uint16, mode="r"))  # plain ndarray: cheap slicing
    if (offsets.ndim != 1 or offsets.size < 1 or offsets[0] != 0 or offsets[-1] != tokens.size
            or (offsets.size > 1 and bool(np.any(np.diff(offsets) < 0)))):
        raise ValueError(f"{idx_path} does not match {bin_path} ({tokens.size} tokens); the prepared data is "
                         f"damaged: run `autoresearch prepare --force`")
    return tokens, offsets.astype(np.int64, copy=False)


class DocumentStream:
    """The documents of one split as uint16 array views, in a deterministic order.

    shuffle=True: epoch e (1-based) visits every document once, in the order
    `np.random.default_rng(seed + e).permutation(n_docs)`; shuffle=False: file order.
    loop=True: epochs follow each other forever; loop=False: one epoch, then StopIteration.
    `.epoch` is the epoch of the document returned last (1 before the first one).
    """

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, *, seed: int = 0, shuffle: bool = True,
                 loop: bool = True):
        self.tokens = tokens
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.n_docs = int(self.offsets.size) - 1
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.loop = bool(loop)
        self.epoch = 1
        self._order: np.ndarray | None = None  # this epoch's permutation (None: file order)
        self._next_doc = 0                     # position within the epoch of the next chunk
        self._started = False
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._k = 0                             # position within the current chunk

    @classmethod
    def from_split(cls, data_dir: str | Path, split: str, **kwargs) -> "DocumentStream":
        tokens, offsets = open_split(data_dir, split)
        return cls(tokens, offsets, **kwargs)

    def _begin_epoch(self) -> None:
        self._order = np.random.default_rng(self.seed + self.epoch).permutation(self.n_docs) if self.shuffle else None
        self._next_doc = 0

    def _load_chunk(self) -> bool:
        """Look up the offsets of the next chunk of documents; False at the end of the last epoch."""
        if not self._started:
            self._started = True
            self._begin_epoch()
        elif self._next_doc >= self.n_docs:
            if not self.loop or self.n_docs == 0:
                return False
            self.epoch += 1
            self._begin_epoch()
        if self.n_docs == 0:
            return False
        lo, hi = self._next_doc, min(self._next_doc + _CHUNK, self.n_docs)
        docs = self._order[lo:hi] if self._order is not None else np.arange(lo, hi)
        self._starts = self.offsets[docs].tolist()
        self._ends = self.offsets[docs + 1].tolist()
        self._next_doc = hi
        self._k = 0
        return True

    def __iter__(self) -> "DocumentStream":
        return self

    def __next__(self) -> np.ndarray:
        if self._k >= len(self._starts) and not self._load_chunk():
            raise StopIteration
        k = self._k
        self._k = k + 1
        return self.tokens[self._starts[k]:self._ends[k]]


class BestFitPacker:
    """Packs documents from `stream` into batches of `rows` rows of `row_len` tokens (see module doc).

    `stream` is any iterator of 1-D integer arrays (documents that start with `bos_id`; one that does
    not gets a BOS put in front of it, empty ones are skipped). At most `buffer_size` pieces wait in
    the buffer. `next_batch()` returns None once the stream has run dry and the buffer can no longer
    fill a whole batch; the tokens of that incomplete batch are then in `leftover()`.
    """

    def __init__(self, stream: Iterable[np.ndarray], rows: int, row_len: int, buffer_size: int = 1000, *,
                 bos_id: int):
        if rows < 1:
            raise ValueError(f"rows must be >= 1, got {rows}")
        if row_len < 2:
            raise ValueError(f"row_len must be >= 2 (T + 1 with T >= 1), got {row_len}")
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        self.stream = iter(stream)
        self.rows, self.row_len, self.buffer_size, self.bos_id = int(rows), int(row_len), int(buffer_size), int(bos_id)
        self._buckets: dict[int, deque] = {}  # piece length (BOS included) -> FIFO of (array, needs_bos)
        self._lengths: list[int] = []         # sorted lengths that have a non-empty bucket
        self._count = 0                       # pieces in the buffer
        self._exhausted = False               # the stream has run dry
        self._partial = np.zeros(0, dtype=np.int64)  # tokens of the incomplete final batch

    # -- buffer -----------------------------------------------------------------------------------
    def _put(self, arr: np.ndarray, needs_bos: bool) -> None:
        length = len(arr) + needs_bos
        bucket = self._buckets.get(length)
        if bucket is None:
            self._buckets[length] = deque(((arr, needs_bos),))
            insort(self._lengths, length)
        else:
            bucket.append((arr, needs_bos))
        self._count += 1

    def _take(self, length: int, i: int) -> tuple[np.ndarray, bool]:
        """Remove the oldest piece of `length`, which sits at index `i` of the sorted lengths."""
        bucket = self._buckets[length]
        piece = bucket.popleft()
        if not bucket:
            del self._buckets[length]
            del self._lengths[i]
        self._count -= 1
        return piece

    def _refill(self) -> None:
        bos, stream, put = self.bos_id, self.stream, self._put
        while self._count < self.buffer_size:
            try:
                doc = next(stream)
            except StopIteration:
                self._exhausted = True
                return
            if len(doc):
                put(doc, bool(doc[0] != bos))

    # -- packing ----------------------------------------------------------------------------------
    def next_batch(self, out: np.ndarray | None = None) -> np.ndarray | None:
        """Fill `out` (or a new array) of shape (rows, row_len) with packed rows; None when exhausted."""
        rows, row_len, bos = self.rows, self.row_len, self.bos_id
        if out is None:
            out = np.empty((rows, row_len), dtype=np.int64)
        elif out.shape != (rows, row_len):
            raise ValueError(f"out has shape {out.shape}; expected {(rows, row_len)}")
        if self._exhausted and not self._count:
            return None
        lengths, take, put = self._lengths, self._take, self._put
        for r in range(rows):
            row = out[r]
            pos = 0
            while pos < row_len:
                if self._count < self.buffer_size and not self._exhausted:
                    self._refill()
                if not self._count:  # the stream is dry: keep what was packed, report no batch
                    self._partial = np.concatenate([out[:r].reshape(-1), row[:pos]]).astype(np.int64)
                    return None
                space = row_len - pos
                i = bisect_right(lengths, space)
                if i:  # the longest piece that fits whole
                    length = lengths[i - 1]
                    arr, needs_bos = take(length, i - 1)
                    if needs_bos:
                        row[pos] = bos
                        row[pos + 1:pos + length] = arr
                    else:
                        row[pos:pos + length] = arr
                    pos += length
                else:  # nothing fits: the shortest piece fills the row, its tail waits behind a BOS
                    arr, needs_bos = take(lengths[0], 0)
                    head = space - needs_bos
                    if needs_bos:
                        row[pos] = bos
                    row[pos + needs_bos:] = arr[:head]
                    put(arr[head:], True)
                    pos = row_len
        return out

    def __iter__(self) -> Iterator[np.ndarray]:
        while (batch := self.next_batch()) is not None:
            yield batch

    def leftover(self) -> np.ndarray:
        """Tokens held but not emitted in a full batch: the buffered pieces (each with its BOS) and,
        once the stream has run dry, the incomplete final batch. Emitted + leftover = everything read."""
        parts = [self._partial]
        for bucket in self._buckets.values():
            for arr, needs_bos in bucket:
                if needs_bos:
                    parts.append(np.array([self.bos_id], dtype=np.int64))
                parts.append(np.asarray(arr, dtype=np.int64))
        return np.concatenate(parts)


# -- the two consumers ----------------------------------------------------------------------------
def make_dataloader(data_dir: str | Path, bos_id: int, B: int, T: int, split: str = "train", device="cpu",
                    seed: int = 0, buffer_size: int = 1000) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """Yield (inputs, targets, epoch) forever: contiguous (B, T) int64 tensors on `device`, where row b
    of targets is row b of inputs moved one token on; every row starts with BOS; `epoch` is 1-based."""
    if split != "train":
        raise ValueError(_TRAIN_ONLY)
    if B < 1 or T < 1:
        raise ValueError(f"B and T must be >= 1, got B={B}, T={T}")
    stream = DocumentStream.from_split(data_dir, split, seed=seed, shuffle=True, loop=True)
    if stream.n_docs == 0 or stream.tokens.size == 0:
        raise ValueError(f"the {split} split in {data_dir} is empty; run `autoresearch prepare --force`")
    packer = BestFitPacker(stream, B, T + 1, buffer_size, bos_id=bos_id)
    return _batches(packer, stream, B, T, torch.device(device))


def _batches(packer: BestFitPacker, stream: DocumentStream, B: int, T: int, device: torch.device):
    rows = np.empty((B, T + 1), dtype=np.int64)
    if device.type == "cuda":
        # Two pinned staging buffers in turn; before one is refilled, wait for the copy that last read it.
        staging = [torch.empty((2, B, T), dtype=torch.int64, pin_memory=True) for _ in range(2)]
        pending: list[torch.cuda.Event | None] = [None, None]
        k = 0
        while True:
            packer.next_batch(rows)
            if pending[k] is not None:
                pending[k].synchronize()
            host = staging[k].numpy()
            host[0] = rows[:, :-1]
            host[1] = rows[:, 1:]
            gpu = staging[k].to(device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(device))
            pending[k] = event
            k ^= 1
            yield gpu[0], gpu[1], stream.epoch
    else:
        while True:
            packer.next_batch(rows)
            pair = torch.empty((2, B, T), dtype=torch.int64)  # fresh each batch: callers may keep the last one
            host = pair.numpy()
            host[0] = rows[:, :-1]
            host[1] = rows[:, 1:]
            if device.type != "cpu":
                pair = pair.to(device)
            yield pair[0], pair[1], stream.epoch


def iter_eval_rows(data_dir: str | Path, bos_id: int, rows: int, row_len: int, split: str) -> Iterator[np.ndarray]:
    """Metric version 1: documents of `split` in file order, one pass, best-fit packed like training.
    Yields fresh (rows, row_len) int64 arrays; the final incomplete batch is dropped."""
    stream = DocumentStream.from_split(data_dir, split, shuffle=False, loop=False)  # fails here, not at next()
    return iter(BestFitPacker(stream, rows, row_len, bos_id=bos_id))


def _pieces(offsets: np.ndarray, row_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every document cut into pieces that fit a row: (start, end, document) per piece. A document's first
    piece opens with its own BOS; every later piece is one token shorter, for the BOS put in front of it."""
    starts, ends, docs = [], [], []
    for doc in range(offsets.size - 1):
        lo, hi, width = int(offsets[doc]), int(offsets[doc + 1]), row_len
        while lo < hi:
            starts.append(lo)
            ends.append(min(hi, lo + width))
            docs.append(doc)
            lo, width = ends[-1], row_len - 1
    return np.array(starts, dtype=np.int64), np.array(ends, dtype=np.int64), np.array(docs, dtype=np.int64)


def content_order(tokens: np.ndarray, starts: np.ndarray, ends: np.ndarray, sources: np.ndarray) -> list[int]:
    """The evaluator's order of pieces: every prefix holds each source in proportion to its share of the
    split's tokens (to within one piece), and within a source the pieces follow a hash of their tokens
    (fixed by the content, not by file order). `sources` holds the source index of each piece."""
    lengths = ends - starts
    keys = [hashlib.blake2b(tokens[a:b].tobytes(), digest_size=8).digest() for a, b in zip(starts.tolist(), ends.tolist())]
    queues, total = {}, {}
    for s in np.unique(sources).tolist():
        members = np.flatnonzero(sources == s)
        queues[s] = deque(sorted(members.tolist(), key=keys.__getitem__))
        total[s] = int(lengths[members].sum()) or 1
    taken = dict.fromkeys(queues, 0)
    heap = [(0.0, s) for s in queues]  # (share of the source already taken, source): the least served next
    heapq.heapify(heap)
    order = []
    while heap:
        _, s = heapq.heappop(heap)
        piece = queues[s].popleft()
        order.append(piece)
        taken[s] += int(lengths[piece])
        if queues[s]:
            heapq.heappush(heap, (taken[s] / total[s], s))
    return order


def mixed_eval_rows(data_dir: str | Path, bos_id: int, rows: int, row_len: int, split: str,
                    owners: bool = False) -> Iterator:
    """Metric version 2: the split's documents cut into row-sized pieces, in `content_order`, laid into
    rows one after another (a piece cut at a row's end goes on in the next row, behind a BOS; every row
    opens with BOS). Yields (rows, row_len) int64 arrays, or (rows, owners) pairs with the document index
    of every position."""
    tokens, offsets = open_split(data_dir, split)  # fails here, not at next()
    src_path = Path(data_dir) / f"{split}.src.npy"
    if not src_path.is_file():
        raise FileNotFoundError(f"prepared data not found: {src_path} does not exist (prepared by an older "
                                "harness); run `autoresearch prepare --force`")
    doc_sources = np.load(src_path)
    if doc_sources.shape != (offsets.size - 1,):
        raise ValueError(f"{src_path} does not match the {split} split; run `autoresearch prepare --force`")
    starts, ends, docs = _pieces(offsets, row_len)
    order = content_order(tokens, starts, ends, doc_sources[docs])

    def batches():
        batch = np.empty((rows, row_len), dtype=np.int64)
        owner = np.empty((rows, row_len), dtype=np.int64)
        r = pos = 0
        for piece in order:
            lo, hi, doc = int(starts[piece]), int(ends[piece]), int(docs[piece])
            opening = True
            while lo < hi:
                if (opening or pos == 0) and tokens[lo] != bos_id:  # a piece from inside a document
                    batch[r, pos], owner[r, pos] = bos_id, doc
                    n = 1
                else:
                    n = min(row_len - pos, hi - lo)
                    batch[r, pos:pos + n] = tokens[lo:lo + n]
                    owner[r, pos:pos + n] = doc
                    lo += n
                opening = False
                pos += n
                if pos == row_len:
                    r, pos = r + 1, 0
                    if r == rows:
                        yield (batch.copy(), owner.copy()) if owners else batch.copy()
                        r = 0

    return batches()


def eval_batches(data_dir: str | Path, bos_id: int, rows: int, row_len: int, split: str,
                 metric_version: int) -> Iterator[np.ndarray]:
    """The rows the evaluator scores, as the workspace's metric version defines them."""
    if metric_version == 1:
        return iter_eval_rows(data_dir, bos_id, rows, row_len, split)
    if metric_version == 2:
        return mixed_eval_rows(data_dir, bos_id, rows, row_len, split)
    raise ValueError(f"metric version {metric_version} is unknown to this harness (known: 1, 2); "
                     "upgrade autoresearch to score this workspace")
