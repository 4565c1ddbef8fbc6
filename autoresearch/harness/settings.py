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


def harness_fingerprint() -> str:
    """sha256 over the harness's own source files: an edited harness no longer matches."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@dataclass
class Settings:
    root: Path
    profile: Profile
    harness_version: str = __version__
    harness_fingerprint: str = ""
    data: dict = field(default_factory=dict)   # data_fingerprint, tokenizer_fingerprint (after prepare)

    def dumps(self) -> str:
        lines = [
            "# Frozen settings of this autoresearch workspace. Written by `autoresearch init`; the data",
            "# fingerprints by the first `autoresearch prepare`. The harness refuses to run if they change.",
            f"harness_version = {json.dumps(self.harness_version)}",
            f"harness_fingerprint = {json.dumps(self.harness_fingerprint)}",
            "",
            "[profile]",
        ]
        lines += [f"{k} = {json.dumps(v)}" for k, v in self.profile.to_dict().items()]
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
            profile=Profile.from_dict(raw["profile"]),
            harness_version=raw.get("harness_version", ""),
            harness_fingerprint=raw.get("harness_fingerprint", ""),
            data=dict(raw.get("data", {})),
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
