"""The workspace train.py runs in, loaded once: settings, prepared data, tokenizer."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from .prepare import require_prepared
from .settings import Settings, find_workspace
from .tokenizer import Tokenizer


@lru_cache(maxsize=1)
def settings() -> Settings:
    return Settings.load(find_workspace())


@lru_cache(maxsize=1)
def data_dir() -> Path:
    return require_prepared(settings().profile)[0]


@lru_cache(maxsize=1)
def tokenizer() -> Tokenizer:
    return Tokenizer.from_directory(data_dir())
