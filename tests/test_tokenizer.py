from autoresearch.harness import tokenizer as tk
from autoresearch.harness.prepare import load_manifest
from autoresearch.harness.paths import prepared_dir
from autoresearch.harness.profiles import get_profile


def test_round_trip_and_special_tokens(cache_dir):
    tok = tk.Tokenizer.from_directory(prepared_dir("cpu"))
    assert tok.get_vocab_size() == 2048
    for text in ["Hello world! Numbers: 12345. Unicode: 你好 — café", "", "  spaces\n\n\tand tabs  "]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.bos_token_id == tok.enc.encode_single_token("<|reserved_0|>")
    ids = tok.encode("to be or not to be", prepend=tok.bos_token_id)
    assert ids[0] == tok.bos_token_id and tok.bos_token_id not in ids[1:]
    # numbers split into groups of at most two digits (the original's pattern)
    assert all(len(tok.decode([i])) <= 2 for i in tok.encode("1234567"))


def test_token_bytes_table(cache_dir):
    d = prepared_dir("cpu")
    tok = tk.Tokenizer.from_directory(d)
    table = tk.load_token_bytes(d)
    assert table.shape == (2048,)
    special = set(tok.spec["special_tokens"].values())
    assert all(table[i] == 0 for i in special)
    text = "The quick brown fox jumps over the lazy dog; ÆØÅ."
    ids = tok.encode(text)
    assert sum(int(table[i]) for i in ids) == len(text.encode("utf-8"))


def test_training_is_deterministic(tmp_path):
    docs = ["alpha beta gamma delta " * 20, "the cat sat on the mat " * 30, "numbers 12 345 6789 " * 10]
    a = tk.train_tokenizer(docs, 300, tmp_path / "a")
    b = tk.train_tokenizer(docs, 300, tmp_path / "b")
    assert a.fingerprint() == b.fingerprint()
    assert a.get_vocab_size() == 300


def test_prepare_is_idempotent_and_splits_disjoint(cache_dir, capsys):
    from autoresearch.harness.prepare import prepare
    import numpy as np

    d = prepared_dir("cpu")
    before = {p.name: p.stat().st_mtime_ns for p in d.iterdir()}
    manifest = prepare(get_profile("cpu"), progress=False)
    assert "nothing to do" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in d.iterdir()} == before
    assert manifest == load_manifest(get_profile("cpu"))
    for split in ("train", "val", "test"):
        tokens = np.memmap(d / f"{split}.bin", dtype=np.uint16, mode="r")
        idx = np.load(d / f"{split}.idx.npy")
        assert idx[0] == 0 and idx[-1] == len(tokens) == manifest["splits"][split]["tokens"]
        assert (tokens[idx[:-1]] == 2044).all()  # every document starts with BOS
    # no validation document appears in training
    from autoresearch.harness.embedded import embedded_documents

    docs = embedded_documents()
    assert not set(docs["val"]) & set(docs["train"])
    assert not set(docs["test"]) & set(docs["train"])
