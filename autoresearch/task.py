"""What a workspace researches: a task. The GPT task (train.py, val_bpb) is built in; any other task is a
folder with a `task.toml` (README: "Writing a task").

    editable   the file(s) the candidate may change (globs); everything else is frozen and guarded
    run        the candidate's work, in the sandbox, under the parent's clock (budget, start-up, hard timeout)
    evaluate   the frozen evaluator, run by the harness in a fresh (sandboxed) process after the run: it
               sees the run folder and a copy of the editable files, writes a JSON result
               {"metric": float, "valid": bool, "reason": str, "metrics": {...}}
    metric, direction (minimize | maximize), rule (the keep rule's default), the search split and the
    hidden split (scored only for kept results), readable (frozen files the run may read), prepare
    evaluate_network   true: the evaluator (never the run) may reach the network, e.g. a grader's endpoint
    evaluate_env       variables passed from the user's environment to the evaluator only, when set
    requires_env       variables that must be set (passed to the evaluator too): `run`, `loop` and `noise`
                       stop before anything when one is missing, saying `requires_help`

`load(folder)` reads and checks a task folder (TaskError, a clear line, on anything wrong); `of(root)` is
the workspace's task (the GPT task when it has no task.toml). Nothing here runs anything.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
import shlex
import sys
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .git import git
from .harness.paths import cache_dir

TASK_FILE = "task.toml"
GPT = "gpt"
DIRECTIONS = ("minimize", "maximize")
SPLITS = ("val", "test")        # the search split and the hidden split (the names the ledger knows)
RESULT_FILE = "result.json"     # what the evaluator writes, in the output folder the harness gives it
KEYS = {"name", "description", "editable", "readable", "run", "evaluate", "metric", "direction", "rule",
        "budget", "startup", "hard_timeout", "eval_timeout", "prepare", "conceal", "search_split",
        "hidden_split", "program", "evaluate_network", "evaluate_env", "requires_env", "requires_help"}

# What the run and the evaluator are told, through the environment.
RUN_DIR_ENV = "AUTORESEARCH_RUN_DIR"          # the run's folder (writable by the run, read-only to the evaluator)
DATA_ENV = "AUTORESEARCH_TASK_DATA"           # the task's prepared data: public/ for the run; public/ and hidden/ for the evaluator
CANDIDATE_ENV = "AUTORESEARCH_CANDIDATE_DIR"  # the evaluator: a copy of the candidate's editable files
SPLIT_ENV = "AUTORESEARCH_SPLIT"              # the evaluator: "val" (the search split) or "test" (the hidden one)
RESULT_ENV = "AUTORESEARCH_RESULT"            # the evaluator: where to write its JSON result
SEED_ENV = "AUTORESEARCH_SEED"
# What a task may not pass to its evaluator from the user's environment: the names the harness sets itself,
# and those that change how programs load (the evaluator runs as `python -I`, but not only Python reads them).
RESERVED_ENV = frozenset({RUN_DIR_ENV, DATA_ENV, CANDIDATE_ENV, SPLIT_ENV, RESULT_ENV, SEED_ENV, "PATH", "HOME",
                          "TMPDIR", "AUTORESEARCH_CACHE", "AUTORESEARCH_OWNER", "AUTORESEARCH_WORKSPACE"})
RESERVED_PREFIXES = ("LD_", "PYTHON")


class TaskError(ValueError):
    """A task folder or file that cannot be used, or an evaluator that broke its contract."""


class TaskUnready(TaskError):
    """The task needs something of the user's environment that is not there (requires_env): a configuration
    error, found before anything is committed or recorded."""


@dataclass(frozen=True)
class Task:
    name: str
    metric: str = "val_bpb"
    direction: str = "minimize"
    editable: tuple[str, ...] = ("train.py",)
    readable: tuple[str, ...] = ()
    run: tuple[str, ...] = ()
    evaluate: tuple[str, ...] = ()
    rule: str = "noise"
    budget: float = 0.0
    startup: float = 0.0
    hard_timeout: float = 0.0
    eval_timeout: float = 0.0
    prepare: tuple[str, ...] = ()
    conceal: tuple[str, ...] = ()
    description: str = ""
    evaluate_network: bool = False
    evaluate_env: tuple[str, ...] = ()
    requires_env: tuple[str, ...] = ()
    requires_help: str = ""
    folder: Path | None = None
    files: tuple[str, ...] = field(default=(), compare=False)   # the task folder's files (relative)

    @property
    def is_gpt(self) -> bool:
        return self.name == GPT and not self.run

    @property
    def sign(self) -> float:
        """+1 when lower is better, -1 when higher is: selection compares sign * value."""
        return 1.0 if self.direction == "minimize" else -1.0

    @property
    def better(self) -> str:
        return "lower" if self.direction == "minimize" else "higher"

    @property
    def hidden_metric(self) -> str:
        """The name of the hidden split's score (test_bpb for the GPT task)."""
        return "test_bpb" if self.is_gpt else f"test_{self.metric}"

    @property
    def deadline(self) -> float:
        """Launch -> the run has exited; past it the run is interrupted and is a `timeout`."""
        return self.startup + self.budget

    @property
    def private_env(self) -> tuple[str, ...]:
        """The variables meant for the evaluator alone (an endpoint's URL, a key): never given to the run."""
        return tuple(dict.fromkeys(self.requires_env + self.evaluate_env))

    def evaluator_env(self, environ) -> dict:
        """The part of `environ` this task passes to its evaluator: its private variables that are set."""
        return {name: environ[name] for name in self.private_env if environ.get(name)}

    def check_env(self, environ) -> None:
        """TaskUnready when a variable of requires_env is unset or empty, saying what to set."""
        if missing := [name for name in self.requires_env if not environ.get(name)]:
            raise TaskUnready(f"the task {self.name} needs {' and '.join(missing)} set"
                              + (f": {self.requires_help}" if self.requires_help else "") + "; nothing was run")

    def is_editable(self, path: str) -> bool:
        return any(fnmatch.fnmatchcase(path, glob) for glob in self.editable)

    def editable_files(self, root: Path) -> list[str]:
        """The workspace's editable files: those git tracks that match a glob (sorted, relative). The guard
        lets them change, never appear or vanish, so nothing in the ignored folders is ever one of them."""
        return [p for p in _tracked(root) if self.is_editable(p)]

    def primary(self, root: Path) -> str:
        """The first editable file (train.py for the GPT task): the one an agent is shown first, and the one
        a SEARCH/REPLACE block without a FILE line edits."""
        files = self.editable_files(root)
        return files[0] if files else self.editable[0]

    def readable_files(self, root: Path) -> list[str]:
        return [p for p in _tracked(root) if any(fnmatch.fnmatchcase(p, glob) for glob in self.readable)]

    def data_dir(self) -> Path:
        """Where `prepare` puts this task's data (public/ and hidden/), keyed by the prepare step's files."""
        return cache_dir() / "tasks" / f"{self.name}-{self.prepare_fingerprint()[:12]}"

    def prepare_fingerprint(self) -> str:
        """sha256 of the prepare command (less the interpreter's path) and of the task files it names."""
        h = hashlib.sha256(" ".join(self.prepare[1:]).encode())
        for arg in self.prepare[1:]:
            if self.folder is not None and (self.folder / arg).is_file():
                h.update(arg.encode() + b"\0" + (self.folder / arg).read_bytes())
        return h.hexdigest()


def _tracked(root: Path) -> list[str]:
    return sorted(p for p in git(root, "ls-files", "-z").split("\0") if p)


GPT_TASK = Task(name=GPT, description="the GPT train.py: val_bpb of a small GPT trained for the profile's budget")


def command(text, what: str) -> tuple[str, ...]:
    """A command of task.toml as argv; `python` is the interpreter the harness runs."""
    if isinstance(text, str):
        argv = shlex.split(text)
    elif isinstance(text, list) and all(isinstance(a, str) for a in text):
        argv = list(text)
    else:
        raise TaskError(f"{what} must be a command line (a string), not {text!r}")
    if not argv:
        raise TaskError(f"{what} is empty")
    return tuple(sys.executable if i == 0 and a in ("python", "python3") else a for i, a in enumerate(argv))


def _seconds(raw: dict, key: str, default: float | None) -> float:
    value = raw.get(key, default)
    if value is None:
        raise TaskError(f"task.toml needs `{key}` (seconds)")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise TaskError(f"task.toml: `{key}` must be a positive number of seconds, not {value!r}")
    return float(value)


def _globs(raw: dict, key: str) -> tuple[str, ...]:
    value = raw.get(key, [])
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise TaskError(f"task.toml: `{key}` must be a list of file globs, not {value!r}")
    for v in value:
        if v.startswith("/") or ".." in Path(v).parts:
            raise TaskError(f"task.toml: `{key}` glob {v!r} must stay inside the task folder")
    return tuple(value)


def _names(raw: dict, key: str) -> tuple[str, ...]:
    """A list of environment variable names, none of them one the harness sets or one that changes loading."""
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TaskError(f"task.toml: `{key}` must be a list of environment variable names, not {value!r}")
    for v in value:
        if not (v.replace("_", "a").isalnum() and v.isascii() and not v[0].isdigit()):
            raise TaskError(f"task.toml: `{key}`: {v!r} is not an environment variable name")
        if v in RESERVED_ENV or v.startswith(RESERVED_PREFIXES):
            raise TaskError(f"task.toml: `{key}`: {v} is the harness's own (or changes how programs load)")
    return tuple(value)


def _script(folder: Path, argv: tuple[str, ...], what: str) -> None:
    """The scripts a command names (arguments ending in .py) must be files of the task folder."""
    for arg in argv[1:]:
        if arg.endswith(".py") and not (folder / arg).is_file():
            raise TaskError(f"task.toml: the {what} command names {arg}, which is not in {folder}")


def load(folder: Path) -> Task:
    """Read and check a task folder; TaskError says what is wrong (nothing is changed by reading)."""
    folder = Path(folder).expanduser().resolve()
    path = folder / TASK_FILE
    if not path.is_file():
        raise TaskError(f"{folder} is not a task folder (no {TASK_FILE})")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise TaskError(f"{path} is not valid TOML: {e}") from None
    if unknown := sorted(set(raw) - KEYS):
        raise TaskError(f"{path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(KEYS))})")
    for key in ("name", "metric", "run", "evaluate", "editable"):
        if key not in raw:
            raise TaskError(f"{path} has no `{key}`")
    name = raw["name"]
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum() or name == GPT:
        raise TaskError(f"{path}: `name` must be letters, digits, '-' or '_' (and not {GPT!r}), not {name!r}")
    direction = raw.get("direction", "minimize")
    if direction not in DIRECTIONS:
        raise TaskError(f"{path}: unknown direction {direction!r} (known: {', '.join(DIRECTIONS)})")
    metric = raw["metric"]
    if not isinstance(metric, str) or not metric.isidentifier():
        raise TaskError(f"{path}: `metric` must be a plain name (e.g. log_loss), not {metric!r}")
    rule = raw.get("rule", "noise")
    if rule not in ("noise", "strict"):
        raise TaskError(f"{path}: unknown keep rule {rule!r} (known: noise, strict)")
    if raw.get("search_split", "val") != "val" or raw.get("hidden_split", "test") != "test":
        raise TaskError(f"{path}: the splits are named val (search) and test (hidden)")
    editable = _globs(raw, "editable")
    if not editable:
        raise TaskError(f"{path}: `editable` names no file")
    files = tuple(sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                         if p.is_file() and "__pycache__" not in p.parts and ".git" not in p.relative_to(folder).parts))
    for glob in editable:
        if not any(fnmatch.fnmatchcase(f, glob) for f in files):
            raise TaskError(f"{path}: the editable glob {glob!r} matches no file of {folder}")
    run, evaluate = command(raw["run"], "`run`"), command(raw["evaluate"], "`evaluate`")
    _script(folder, run, "run")
    _script(folder, evaluate, "evaluate")
    for arg in evaluate[1:]:
        if arg.endswith(".py") and any(fnmatch.fnmatchcase(arg, g) for g in editable):
            raise TaskError(f"{path}: the evaluator {arg} cannot be editable")
    prepare = command(raw["prepare"], "`prepare`") if raw.get("prepare") else ()
    _script(folder, prepare, "prepare")
    conceal = _globs(raw, "conceal")
    budget = _seconds(raw, "budget", None)
    startup = _seconds(raw, "startup", 10.0)
    network = raw.get("evaluate_network", False)
    if not isinstance(network, bool):
        raise TaskError(f"{path}: `evaluate_network` must be true or false, not {network!r}")
    help_text = raw.get("requires_help", "")
    if not isinstance(help_text, str):
        raise TaskError(f"{path}: `requires_help` must be a string, not {help_text!r}")
    hard = _seconds(raw, "hard_timeout", startup + budget + 10.0)
    if hard < startup + budget:
        raise TaskError(f"{path}: hard_timeout {hard:g}s is shorter than startup + budget ({startup + budget:g}s)")
    return Task(name=name, metric=metric, direction=direction, editable=editable, readable=_globs(raw, "readable"),
                run=run, evaluate=evaluate, rule=rule, budget=budget, startup=startup, hard_timeout=hard,
                eval_timeout=_seconds(raw, "eval_timeout", max(60.0, 2 * budget)), prepare=prepare, conceal=conceal,
                description=str(raw.get("description", "")), evaluate_network=network,
                evaluate_env=_names(raw, "evaluate_env"), requires_env=_names(raw, "requires_env"),
                requires_help=help_text, folder=folder, files=files)


def of(root: Path) -> Task:
    """The workspace's task: its task.toml, or the GPT task."""
    root = Path(root)
    return load(root) if (root / TASK_FILE).is_file() else GPT_TASK


def builtin() -> dict[str, Path | None]:
    """The built-in tasks: name -> folder (None for the GPT task, which is made from its template)."""
    base = Path(str(resources.files("autoresearch.tasks")))
    found = {GPT: None}
    found |= {p.parent.name: p.parent for p in sorted(base.glob(f"*/{TASK_FILE}"))}
    return found


def find(name_or_path: str) -> Path | None:
    """A built-in task's folder by name, or a user's task folder by path (None: the GPT task)."""
    tasks = builtin()
    if name_or_path in tasks:
        return tasks[name_or_path]
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        return folder.resolve()
    raise TaskError(f"unknown task {name_or_path!r}: neither a built-in task ({', '.join(tasks)}) nor a folder")


def parse_result(text: str) -> dict:
    """The evaluator's JSON result, checked: {"metric": float, "valid": bool, "reason": str, "metrics": {}}."""
    import json

    try:
        result = json.loads(text)
    except ValueError:
        raise TaskError(f"the evaluator's result is not JSON: {text[:200]!r}") from None
    if not isinstance(result, dict) or "valid" not in result or not isinstance(result["valid"], bool):
        raise TaskError(f"the evaluator's result needs \"valid\": true|false, got {text[:200]!r}")
    metric = result.get("metric")
    if result["valid"] and (isinstance(metric, bool) or not isinstance(metric, (int, float))
                            or not math.isfinite(metric)):
        raise TaskError(f"the evaluator's result is valid but its \"metric\" is not a finite number: {metric!r}")
    metrics = result.get("metrics", {})
    if not isinstance(metrics, dict):
        raise TaskError(f"the evaluator's \"metrics\" must be an object, not {metrics!r}")
    return {"metric": float(metric) if result["valid"] else None, "valid": result["valid"],
            "reason": str(result.get("reason", "")), "metrics": metrics}
