"""autoresearch: an agent improves train.py; a frozen harness judges it."""

__version__ = "0.3.0"  # 0.3: tasks (task.toml) and the swarm; 0.2: metric 2 (every source sampled in proportion), whole-package fingerprint
