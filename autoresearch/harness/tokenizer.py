"""BPE tokenizer: trained with rustbpe, used through tiktoken, stored as plain JSON.

The split pattern and the special tokens are the original autoresearch's: a GPT-4 style pattern with
numbers split into groups of at most two digits, and four reserved special tokens, the first of which is
BOS (it starts every document). `token_bytes.npy` holds the UTF-8 length of every token (0 for special
tokens), the table that turns nats per token into bits per byte.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Iterable

import numpy as np

SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)
SPECIAL_TOKENS = [f"<|reserved_{i}|>" for i in range(4)]
BOS_TOKEN = SPECIAL_TOKENS[0]
TOKENIZER_FILE = "tokenizer.json"
TOKEN_BYTES_FILE = "token_bytes.npy"


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: Path) -> "Tokenizer":
    """Train a BPE of `vocab_size` tokens (special tokens included) and save it into `out_dir`."""
    import rustbpe

    if vocab_size > 65536:
        raise ValueError("vocab_size above 65536 does not fit the uint16 token memmaps")
    bpe = rustbpe.Tokenizer()
    bpe.train_from_iterator(iter(texts), vocab_size - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN)
    ranks = sorted(((bytes(tok), rank) for tok, rank in bpe.get_mergeable_ranks()), key=lambda x: x[1])
    spec = {
        "pattern": bpe.get_pattern(),
        "mergeable_ranks": [[base64.b64encode(tok).decode("ascii"), rank] for tok, rank in ranks],
        "special_tokens": {name: len(ranks) + i for i, name in enumerate(SPECIAL_TOKENS)},
        "bos_token": BOS_TOKEN,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(out_dir / TOKENIZER_FILE, json.dumps(spec).encode("utf-8"))
    tok = Tokenizer(spec)
    tmp = out_dir / (TOKEN_BYTES_FILE + ".tmp.npy")
    np.save(tmp, tok.token_bytes())
    tmp.replace(out_dir / TOKEN_BYTES_FILE)
    return tok


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


class Tokenizer:
    """A tiktoken encoding with the BOS token; what train.py and the harness both use."""

    def __init__(self, spec: dict):
        import tiktoken

        self.spec = spec
        ranks = {base64.b64decode(tok): rank for tok, rank in spec["mergeable_ranks"]}
        self.enc = tiktoken.Encoding(
            name="autoresearch-bpe",
            pat_str=spec["pattern"],
            mergeable_ranks=ranks,
            special_tokens=dict(spec["special_tokens"]),
        )
        self.bos_token_id = self.enc.encode_single_token(spec["bos_token"])

    @classmethod
    def from_directory(cls, directory: Path) -> "Tokenizer":
        path = Path(directory) / TOKENIZER_FILE
        if not path.exists():
            raise FileNotFoundError(f"no tokenizer at {path}: run `autoresearch prepare` first")
        return cls(json.loads(path.read_text("utf-8")))

    def get_vocab_size(self) -> int:
        return self.enc.n_vocab

    def get_bos_token_id(self) -> int:
        return self.bos_token_id

    def encode(self, text, prepend: int | None = None, num_threads: int = 8):
        """Encode a string or a list of strings (batched), optionally prefixing a token id."""
        if isinstance(text, str):
            ids = self.enc.encode_ordinary(text)
            return [prepend, *ids] if prepend is not None else ids
        rows = self.enc.encode_ordinary_batch(list(text), num_threads=num_threads)
        if prepend is not None:
            rows = [[prepend, *row] for row in rows]
        return rows

    def decode(self, ids) -> str:
        return self.enc.decode(list(ids))

    def token_bytes(self) -> np.ndarray:
        """UTF-8 byte length of every token id; 0 for special tokens (they are not text)."""
        special = set(self.spec["special_tokens"].values())
        out = np.zeros(self.enc.n_vocab, dtype=np.int32)
        for i in range(self.enc.n_vocab):
            if i not in special:
                out[i] = len(self.enc.decode_single_token_bytes(i))
        return out

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.spec, sort_keys=True).encode()).hexdigest()


def load_token_bytes(directory: Path) -> np.ndarray:
    return np.load(Path(directory) / TOKEN_BYTES_FILE)
