"""The frozen settings file of a workspace (`autoresearch.toml`) and how the harness finds it.

`autoresearch init` writes the profile (with its budget) and the harness version; the first
`autoresearch prepare` in the workspace pins the data and tokenizer fingerprints. After that the file
never changes, and every run checks that the cache still matches it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from .profiles import Profile

SETTINGS_FILE = "autoresearch.toml"
WORKSPACE_ENV = "AUTORESEARCH_WORKSPACE"


PACKAGE_DIR = Path(__file__).resolve().parent.parent   # the installed `autoresearch` package

# The metric's definition, versioned: a workspace is scored by the version it was created with.
#   1  validation rows: documents in file order, best-fit packed (a biased sample: the first sources only)
#   2  validation rows: documents in a content-hash order that mixes every source, cut into rows in sequence
METRIC_VERSION = 2
METRIC_VERSIONS = (1, 2)


def package_files(root: Path = PACKAGE_DIR) -> list[Path]:
    """Every file of the installed package that the parent or the evaluator may run or read, sorted."""
    return sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                  and p.suffix not in (".pyc", ".pyo"))


def harness_fingerprint(root: Path = PACKAGE_DIR) -> str:
    """sha256 over every file of the installed `autoresearch` package (the harness, the parent that
    decides, the templates and the corpus): an edited installation no longer matches."""
    h = hashlib.sha256()
    for path in package_files(root):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


@dataclass
class Settings:
    root: Path
    profile: Profile | None                    # the GPT task's; None for a task workspace
    harness_version: str = __version__
    harness_fingerprint: str = ""
    metric_version: int = METRIC_VERSION
    data: dict = field(default_factory=dict)   # data_fingerprint, tokenizer_fingerprint (after prepare)
    task: dict = field(default_factory=dict)   # a task workspace: name, metric, direction (task.toml has the rest)

    def dumps(self) -> str:
        lines = [
            "# Frozen settings of this autoresearch workspace. Written by `autoresearch init`; the data",
            "# fingerprints by the first `autoresearch prepare`. The harness refuses to run if they change.",
            f"harness_version = {json.dumps(self.harness_version)}",
            f"harness_fingerprint = {json.dumps(self.harness_fingerprint)}",
            f"metric_version = {self.metric_version}",
        ]
        if self.profile is not None:
            lines += ["", "[profile]"] + [f"{k} = {json.dumps(v)}" for k, v in self.profile.to_dict().items()]
        if self.task:
            lines += ["", "[task]"] + [f"{k} = {json.dumps(v)}" for k, v in self.task.items()]
        if self.data:
            lines += ["", "[data]"] + [f"{k} = {json.dumps(v)}" for k, v in sorted(self.data.items())]
        return "\n".join(lines) + "\n"

    def save(self) -> None:
        path = self.root / SETTINGS_FILE
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.dumps())
        tmp.replace(path)

    @classmethod
    def load(cls, root: Path) -> "Settings":
        path = Path(root) / SETTINGS_FILE
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{root} is not an autoresearch workspace (no {SETTINGS_FILE})") from None
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path} is not valid TOML: {e}") from None
        return cls(
            root=Path(root),
            profile=Profile.from_dict(raw["profile"]) if "profile" in raw else None,
            harness_version=raw.get("harness_version", ""),
            harness_fingerprint=raw.get("harness_fingerprint", ""),
            metric_version=int(raw.get("metric_version", 1)),  # workspaces made before versioning: 1
            data=dict(raw.get("data", {})),
            task=dict(raw.get("task", {})),
        )


def find_workspace(start: Path | None = None) -> Path:
    """$AUTORESEARCH_WORKSPACE, else the folder of the running script, else cwd and its parents."""
    if env := os.environ.get(WORKSPACE_ENV):
        return Path(env).resolve()
    candidates = []
    if sys.argv and sys.argv[0] and sys.argv[0] not in ("-c", "-m"):
        candidates.append(Path(sys.argv[0]).resolve().parent)
    here = (start or Path.cwd()).resolve()
    candidates += [here, *here.parents]
    for folder in candidates:
        if (folder / SETTINGS_FILE).exists():
            return folder
    raise FileNotFoundError(
        f"no {SETTINGS_FILE} found in {here} or its parents: run this inside a workspace made by "
        "`autoresearch init DIR --profile NAME`"
    )
