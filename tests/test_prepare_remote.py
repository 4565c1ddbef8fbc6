"""`prepare` for the downloaded datasets, end to end against the loopback hub of test_download."""

from __future__ import annotations

import json
import random

import numpy as np

from autoresearch.harness import download as dl
from autoresearch.harness.paths import prepared_dir
from autoresearch.harness.prepare import prepare
from autoresearch.harness.profiles import Profile
from test_download import hub, parquet_bytes  # noqa: F401 - the fixture is used by name


def prose(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    words = "the a cat dog sat ran on under mat tree little big happy sad Lily Tom said 12 345".split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(20, 120))) + "." for _ in range(n)]


def check_prepared(name: str, vocab: int) -> dict:
    d = prepared_dir(name)
    manifest = json.loads((d / "manifest.json").read_text())
    for split in ("train", "val", "test"):
        tokens = np.memmap(d / f"{split}.bin", dtype=np.uint16, mode="r")
        idx = np.load(d / f"{split}.idx.npy")
        assert manifest["splits"][split]["documents"] == len(idx) - 1 > 0
        assert tokens.max() < vocab
    return manifest


def test_climbmix_prepare_from_a_flaky_hub(hub, tmp_path, monkeypatch):
    fake, url = hub
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(dl.CLIMBMIX_ENV, url)
    monkeypatch.setattr(dl.time, "sleep", lambda s: None)
    for i in range(2):
        fake.files[dl.shard_name(i)] = parquet_bytes(prose(i, 200))
    fake.files[dl.shard_name(dl.VAL_SHARD)] = parquet_bytes(prose(99, 40))
    fake.hook = lambda name, nth: (500, b"busy", None) if nth == 1 else None  # every file fails once
    profile = Profile(name="mini-climbmix", dataset="climbmix", vocab_size=300, max_seq_len=64, time_budget=1,
                      eval_tokens=512, eval_batch_size=2, startup_allowance=10, export_allowance=5, num_shards=2)
    manifest = prepare(profile, progress=False)
    assert manifest["splits"]["val"]["documents"] == 20 and manifest["splits"]["test"]["documents"] == 20
    assert manifest["splits"]["train"]["documents"] == 400
    assert check_prepared("mini-climbmix", 300) == manifest
    requests = sum(fake.counts.values())
    assert requests == 6  # 3 files, each failed once then succeeded
    prepare(profile, progress=False)  # idempotent: nothing is downloaded again
    assert sum(fake.counts.values()) == requests


def test_tinystories_prepare(hub, tmp_path, monkeypatch):
    fake, url = hub
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(dl.TINYSTORIES_ENV, url)
    train, valid = dl.TINYSTORIES_FILES
    fake.files[train] = "\n<|endoftext|>\n".join(prose(1, 300)).encode()
    fake.files[valid] = "\n<|endoftext|>\n".join(prose(2, 30)).encode()
    profile = Profile(name="mini-tiny", dataset="tinystories", vocab_size=280, max_seq_len=64, time_budget=1,
                      eval_tokens=512, eval_batch_size=2, startup_allowance=10, export_allowance=5)
    manifest = prepare(profile, progress=False)
    assert manifest["splits"]["train"]["documents"] == 300
    assert manifest["splits"]["val"]["documents"] == 15 and manifest["splits"]["test"]["documents"] == 15
    check_prepared("mini-tiny", 280)
