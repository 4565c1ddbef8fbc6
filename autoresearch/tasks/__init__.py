"""Built-in task folders (package data): one folder per task, each with its task.toml."""
