"""autoresearch: an agent improves train.py; a frozen harness judges it."""

__version__ = "0.1.0"
