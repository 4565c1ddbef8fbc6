"""Where prepared data lives: one cache directory, overridable with AUTORESEARCH_CACHE."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "AUTORESEARCH_CACHE"


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "autoresearch"


def raw_dir(dataset: str) -> Path:
    """Downloaded source files of one dataset (shared by every profile that uses it)."""
    return cache_dir() / "raw" / dataset


def prepared_dir(profile_name: str) -> Path:
    """Tokenizer, token memmaps and manifest of one profile."""
    return cache_dir() / "prepared" / profile_name
