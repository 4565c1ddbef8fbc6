"""The packing data loader: shapes, BOS alignment, nothing padded or lost, determinism, and its errors.

Test splits number their non-BOS tokens 1, 2, 3, ... in file order, so every token is unique and two
neighbouring non-BOS tokens of a row must be consecutive numbers (a piece never starts without a BOS).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from autoresearch.harness.loader import (BestFitPacker, DocumentStream, eval_batches, iter_eval_rows, make_dataloader,
                                         mixed_eval_rows)

BOS = 0


def write_split(data_dir: Path, split: str, lengths) -> np.ndarray:
    """Write a prepared split whose documents have `lengths` (BOS included); return its tokens."""
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.arange(offsets[-1], dtype=np.int64)  # placeholders; BOS and numbering set below
    is_bos = np.zeros(offsets[-1], dtype=bool)
    is_bos[offsets[:-1]] = True
    tokens[is_bos] = BOS
    tokens[~is_bos] = np.arange(1, int((~is_bos).sum()) + 1)
    assert tokens.max() < 2**16
    data_dir.mkdir(parents=True, exist_ok=True)
    tokens.astype(np.uint16).tofile(data_dir / f"{split}.bin")
    np.save(data_dir / f"{split}.idx.npy", offsets)
    return tokens


def random_lengths(seed: int, n: int, row_len: int) -> np.ndarray:
    """Varied lengths: BOS-only documents, short ones, and some spanning several rows."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, row_len // 2, n)
    long = rng.random(n) < 0.3
    lengths[long] = rng.integers(row_len // 2, 3 * row_len, long.sum())
    lengths[:3] = 1
    return lengths


def non_bos_counts(tokens, size: int) -> np.ndarray:
    tokens = np.asarray(tokens, dtype=np.int64).ravel()
    return np.bincount(tokens[tokens != BOS], minlength=size)


def assert_rows_well_formed(rows: np.ndarray) -> None:
    """Every row opens with BOS; neighbouring non-BOS tokens are consecutive (one piece, in order)."""
    rows = np.asarray(rows)
    assert (rows[:, 0] == BOS).all()
    a, b = rows[:, :-1], rows[:, 1:]
    both = (a != BOS) & (b != BOS)
    assert (b[both] == a[both] + 1).all()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "prepared"
    write_split(d, "train", random_lengths(1, 400, 33))
    write_split(d, "val", random_lengths(2, 150, 33))
    return d


def test_batches_have_exact_shape_dtype_shift_and_bos(data_dir):
    B, T = 4, 32
    loader = make_dataloader(data_dir, BOS, B, T, seed=3)
    for _ in range(60):
        x, y, epoch = next(loader)
        for t in (x, y):
            assert t.shape == (B, T) and t.dtype == torch.int64 and t.device.type == "cpu"
            assert t.is_contiguous()
            t.view(-1)  # train.py flattens targets
        assert torch.equal(x[:, 1:], y[:, :-1])
        rows = torch.cat([x, y[:, -1:]], dim=1).numpy()
        assert_rows_well_formed(rows)
        assert isinstance(epoch, int) and epoch >= 1


def test_best_fit_rule_on_a_small_example():
    # Documents of 7, 4, 3 and 12 tokens; rows of 10.
    docs = [np.array([BOS, *range(10 * i + 1, 10 * i + n)], dtype=np.uint16)
            for i, n in enumerate([7, 4, 3, 12])]
    packer = BestFitPacker(iter(docs), 1, 10, bos_id=BOS)
    a, b, c, d = (doc.astype(np.int64) for doc in docs)
    # The longest that fits (7), then the 3 fits the rest exactly.
    assert packer.next_batch()[0].tolist() == [*a, *c]
    # 4 fits; then nothing does: the shortest (the 12) is cut, its head ends the row.
    assert packer.next_batch()[0].tolist() == [*b, *d[:6]]
    # Only the tail (BOS + 6 tokens) is left: no full row, and it is reported, not dropped.
    assert packer.next_batch() is None
    assert packer.leftover().tolist() == [BOS, *d[6:]]
    assert packer.next_batch() is None


def test_one_pass_loses_and_pads_nothing(data_dir):
    tokens = write_split(data_dir, "train", random_lengths(7, 300, 65))
    size = int(tokens.max()) + 1
    stream = DocumentStream.from_split(data_dir, "train", shuffle=False, loop=False)
    packer = BestFitPacker(stream, 3, 65, buffer_size=50, bos_id=BOS)
    batches = list(packer)
    assert len(batches) > 10
    emitted = np.concatenate(batches)
    assert emitted.shape[1] == 65 and emitted.dtype == np.int64
    assert_rows_well_formed(emitted)
    leftover = packer.leftover()
    assert 0 < leftover.size < 3 * 65  # the incomplete final batch
    # Every non-BOS token exactly once, across the full batches and what was left over.
    counts = non_bos_counts(emitted, size) + non_bos_counts(leftover, size)
    assert np.array_equal(counts, non_bos_counts(tokens, size))
    assert counts[1:].min() == 1 and counts.max() == 1


def test_shuffled_endless_stream_accounts_for_every_token(data_dir):
    tokens = write_split(data_dir, "train", random_lengths(11, 120, 33))
    size = int(tokens.max()) + 1
    read = []

    def recording(stream):
        for doc in stream:
            read.append(np.array(doc, dtype=np.int64))
            yield doc

    stream = DocumentStream.from_split(data_dir, "train", seed=5)
    packer = BestFitPacker(recording(stream), 8, 33, buffer_size=40, bos_id=BOS)
    emitted = np.concatenate([packer.next_batch() for _ in range(100)])  # several epochs
    assert stream.epoch >= 3
    assert_rows_well_formed(emitted)
    counts = non_bos_counts(emitted, size) + non_bos_counts(packer.leftover(), size)
    assert np.array_equal(counts, non_bos_counts(np.concatenate(read), size))


def test_document_stream_epochs_are_seeded_permutations(data_dir):
    offsets = np.load(data_dir / "train.idx.npy")
    starts = {int(s): i for i, s in enumerate(offsets[:-1])}
    n = len(offsets) - 1
    stream = DocumentStream.from_split(data_dir, "train", seed=9)
    assert stream.epoch == 1
    base = stream.tokens
    for epoch in (1, 2, 3):
        order = []
        for _ in range(n):
            doc = next(stream)
            assert stream.epoch == epoch and doc[0] == BOS
            start = (doc.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // 2
            order.append(starts[start])
            assert len(doc) == offsets[order[-1] + 1] - offsets[order[-1]]
        assert order == np.random.default_rng(9 + epoch).permutation(n).tolist()
    once = DocumentStream.from_split(data_dir, "train", shuffle=False, loop=False)
    assert sum(1 for _ in once) == n and once.epoch == 1


def test_same_seed_same_batches_other_seed_differs(data_dir):
    def take(seed, k=25):
        loader = make_dataloader(data_dir, BOS, 4, 16, seed=seed)
        return [next(loader) for _ in range(k)]

    first, again, other = take(1), take(1), take(2)
    for (x1, y1, e1), (x2, y2, e2) in zip(first, again):
        assert torch.equal(x1, x2) and torch.equal(y1, y2) and e1 == e2
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(first, other))


def test_epoch_counts_up_from_one(data_dir):
    loader = make_dataloader(data_dir, BOS, 8, 32, seed=0, buffer_size=20)
    epochs = [next(loader)[2] for _ in range(200)]
    assert epochs[0] == 1
    assert all(b - a in (0, 1) for a, b in zip(epochs, epochs[1:]))
    assert epochs[-1] >= 3


def test_yielded_batches_are_not_overwritten_later(data_dir):
    loader = make_dataloader(data_dir, BOS, 2, 16)
    x, y, _ = next(loader)
    kept = x.clone(), y.clone()
    for _ in range(5):
        next(loader)
    assert torch.equal(x, kept[0]) and torch.equal(y, kept[1])


def test_training_loader_refuses_other_splits(data_dir):
    message = "the training loader reads the train split only; validation data is scored by the harness"
    for split in ("val", "test", "Train"):
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            make_dataloader(data_dir, BOS, 2, 8, split=split)


def test_missing_data_says_to_prepare(tmp_path):
    with pytest.raises(FileNotFoundError, match="autoresearch prepare"):
        make_dataloader(tmp_path / "nothing", BOS, 2, 8)
    write_split(tmp_path / "half", "train", [5, 6])
    (tmp_path / "half" / "train.idx.npy").unlink()
    with pytest.raises(FileNotFoundError, match="autoresearch prepare"):
        make_dataloader(tmp_path / "half", BOS, 2, 8)
    with pytest.raises(FileNotFoundError, match="autoresearch prepare"):
        iter_eval_rows(tmp_path / "nothing", BOS, 2, 9, "val")


def test_eval_rows_are_deterministic_and_shaped(data_dir):
    tokens = write_split(data_dir, "val", random_lengths(4, 200, 33))
    rows, row_len = 4, 33
    first = list(iter_eval_rows(data_dir, BOS, rows, row_len, "val"))
    again = list(iter_eval_rows(data_dir, BOS, rows, row_len, "val"))
    assert len(first) == len(again) > 5
    for a, b in zip(first, again):
        assert a.shape == (rows, row_len) and a.dtype == np.int64
        assert np.array_equal(a, b)
    assert all(a is not b for a, b in zip(first, first[1:]))  # fresh arrays
    emitted = np.concatenate(first)
    assert_rows_well_formed(emitted)
    # One pass: fewer tokens than the split (plus the BOS of each cut), only the last batch dropped.
    stream = DocumentStream.from_split(data_dir, "val", shuffle=False, loop=False)
    packer = BestFitPacker(stream, rows, row_len, bos_id=BOS)
    assert len(list(packer)) == len(first)
    assert packer.leftover().size < rows * row_len
    size = int(tokens.max()) + 1
    counts = non_bos_counts(emitted, size) + non_bos_counts(packer.leftover(), size)
    assert np.array_equal(counts, non_bos_counts(tokens, size))


def test_eval_rows_of_a_split_too_small_for_one_batch(tmp_path):
    write_split(tmp_path, "val", [3, 4])
    assert list(iter_eval_rows(tmp_path, BOS, 2, 9, "val")) == []


def test_documents_without_bos_get_one_and_empty_ones_are_skipped():
    docs = [np.array([BOS, 1, 2], dtype=np.uint16), np.array([], dtype=np.uint16),
            np.array([3, 4, 5], dtype=np.uint16)]
    packer = BestFitPacker(iter(docs), 1, 7, bos_id=BOS)
    assert packer.next_batch()[0].tolist() == [BOS, 3, 4, 5, BOS, 1, 2]


@pytest.mark.gpu
def test_cuda_batches_match_cpu(data_dir):
    cpu = make_dataloader(data_dir, BOS, 4, 32, seed=4)
    gpu = make_dataloader(data_dir, BOS, 4, 32, seed=4, device="cuda")
    held = []
    for _ in range(50):
        (x, y, e), (gx, gy, ge) = next(cpu), next(gpu)
        assert gx.device.type == "cuda" and gx.is_contiguous() and gy.is_contiguous()
        assert torch.equal(gx.cpu(), x) and torch.equal(gy.cpu(), y) and e == ge
        held.append((x, gx))
    torch.cuda.synchronize()
    assert all(torch.equal(gx.cpu(), x) for x, gx in held)


# -- metric 2: the evaluator's sample of every source ------------------------------------------------
def write_docs(data_dir: Path, split: str, docs: list[np.ndarray], sources: list[int]) -> None:
    """A prepared split from explicit documents (each opening with BOS) and their source ids."""
    offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum([len(d) for d in docs], out=offsets[1:])
    data_dir.mkdir(parents=True, exist_ok=True)
    np.concatenate(docs).astype(np.uint16).tofile(data_dir / f"{split}.bin")
    np.save(data_dir / f"{split}.idx.npy", offsets)
    np.save(data_dir / f"{split}.src.npy", np.asarray(sources, dtype=np.uint16))


def two_sources(rng_seed: int = 0) -> tuple[list[np.ndarray], list[int]]:
    """Source 0: three long documents (many rows each), first in the file; source 1: 300 short ones."""
    rng = np.random.default_rng(rng_seed)
    lengths = [400, 700, 500] + rng.integers(2, 30, 300).tolist()
    docs, next_token = [], 1
    for n in lengths:
        docs.append(np.concatenate([[BOS], np.arange(next_token, next_token + n - 1)]))
        next_token += n - 1
    return docs, [0, 0, 0] + [1] * 300


def test_mixed_eval_rows_are_well_formed_and_use_each_token_once(tmp_path):
    docs, sources = two_sources()
    write_docs(tmp_path, "val", docs, sources)
    batches = list(mixed_eval_rows(tmp_path, BOS, 4, 33, "val"))
    emitted = np.concatenate(batches)
    assert_rows_well_formed(emitted)  # a piece from inside a document always follows a BOS
    counts = non_bos_counts(emitted, int(max(d.max() for d in docs)) + 1)
    total = sum(len(d) - 1 for d in docs)
    assert counts.max() == 1 and counts.sum() > total - 4 * 33  # all but the last, incomplete batch
    again = list(mixed_eval_rows(tmp_path, BOS, 4, 33, "val"))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))


def test_mixed_eval_rows_sample_every_source_in_proportion(tmp_path):
    """File order puts source 0 first; a prefix of the sample holds both sources in their shares."""
    docs, sources = two_sources()
    write_docs(tmp_path, "val", docs, sources)
    share0 = sum(len(d) for d, s in zip(docs, sources) if s == 0) / sum(len(d) for d in docs)
    owned = np.array(sources)
    for n_batches in (2, 5, 10):
        got = [0, 0]
        for i, (rows, owners) in enumerate(mixed_eval_rows(tmp_path, BOS, 4, 33, "val", owners=True), 1):
            got[0] += int((owned[owners] == 0).sum())
            got[1] += int((owned[owners] == 1).sum())
            if i == n_batches:
                break
        assert abs(got[0] - share0 * sum(got)) <= 2 * 33, (n_batches, got, share0)


def test_mixed_eval_rows_do_not_depend_on_file_order(tmp_path):
    docs, sources = two_sources()
    write_docs(tmp_path / "a", "val", docs, sources)
    order = np.random.default_rng(5).permutation(len(docs))
    write_docs(tmp_path / "b", "val", [docs[i] for i in order], [sources[i] for i in order])
    a = list(mixed_eval_rows(tmp_path / "a", BOS, 4, 33, "val"))
    b = list(mixed_eval_rows(tmp_path / "b", BOS, 4, 33, "val"))
    assert len(a) == len(b) > 10 and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_metric_versions_and_missing_sources_are_clear_errors(tmp_path):
    write_split(tmp_path, "val", [5, 6, 7])
    with pytest.raises(FileNotFoundError, match="prepare --force"):
        mixed_eval_rows(tmp_path, BOS, 1, 4, "val")
    with pytest.raises(ValueError, match="metric version 3"):
        eval_batches(tmp_path, BOS, 1, 4, "val", 3)
    assert list(eval_batches(tmp_path, BOS, 1, 4, "val", 1))  # metric 1 needs no sources
