"""Where everything lives in a workspace. The one module that spells out its paths and names.

    train.py  program.md  autoresearch.toml   the candidate, the agent's instructions, the frozen settings
    results.tsv                              the ledger as a table, rewritten after every change (ignored)
    runs/NNNN/  runs/NNNN.log                an experiment's run folder and log (NNNN-K: its K-th repeat)
    runs/noise-STAMP-K/  runs/noise-STAMP-K.log   a repeat of `autoresearch noise`
    runs/manual-STAMP/                       a run of `python train.py` by hand
    runs/proposals/NNNN.txt                  what the agent answered (or its error) for proposal attempt NNNN
    report/                                  `autoresearch report` (progress.png, report.html)
    .autoresearch/                           the harness's state: ledger, lock, journal, quarantine, ...
    .autoresearch/swarm/NAME/                a swarm worker's own folder (git repo) while the swarm runs
    refs/autoresearch/discarded/NNNN         the commit of a discarded experiment (kept reachable)
    refs/autoresearch/saved/NNNN             uncommitted edits put aside when an experiment was reset

Everything below the workspace's root is named here; the modules that read or write it ask this one.
Nothing here touches the disk.
"""

from __future__ import annotations

from pathlib import Path

from .harness.protocol import PROGRAM_FILE
from .harness.settings import SETTINGS_FILE

CANDIDATE = "train.py"                  # the one file an experiment may change
PROGRAM_MD = "program.md"               # the agent's instructions (the human edits them)
SETTINGS = SETTINGS_FILE                # the frozen settings, pinned by `init` and `prepare`
RESULTS_TSV = "results.tsv"
RUNS = "runs"
REPORT = "report"
STATE = ".autoresearch"
EXPORTED_MODEL = PROGRAM_FILE           # what train.py leaves in its run folder for the evaluator

# files and folders under STATE
LEDGER_DB = "ledger.sqlite"
LOCK = "lock"
JOURNAL = "current.json"
PARKED = "candidate-train.py"           # an edit put aside while `noise` repeats the frontier
PARKED_TASK = "parked"                  # a task's edited files, put aside likewise
QUARANTINE = "quarantine"               # code the loop found hidden in an ignored folder
OPTUNA_DB = "optuna.db"
OPTUNA_PENDING = "optuna-pending.json"
MLFLOW = "mlflow"
SWARM = "swarm"                         # the swarm's worker folders (removed when the swarm stops)

HIDING_PLACES = (RUNS, REPORT, STATE)   # ignored by git, so `git status` would not show code put there
CODE_SUFFIXES = (".py", ".pyc", ".so", ".pth")
REF_PREFIX = "refs/autoresearch"
BRANCH_PREFIX = "autoresearch/"         # a workspace's branches: autoresearch/<tag>


def branch_of(tag: str) -> str:
    return BRANCH_PREFIX + tag


def run_name(exp_id: int, repeat: int | None = None) -> str:
    return f"{exp_id:04d}" if repeat is None else f"{exp_id:04d}-{repeat}"


def run_dir(root: Path, exp_id: int, repeat: int | None = None) -> Path:
    return Path(root) / RUNS / run_name(exp_id, repeat)


def run_log(root: Path, exp_id: int, repeat: int | None = None) -> Path:
    return Path(root) / RUNS / f"{run_name(exp_id, repeat)}.log"


def run_dirs_of(root: Path, exp_id: int) -> list[Path]:
    """The run folder of an experiment and of each of its repeats."""
    return sorted(p for p in (Path(root) / RUNS).glob(f"{exp_id:04d}*") if p.is_dir())


PROPOSALS = "proposals"


def proposal_file(root: Path, attempt_id: int) -> Path:
    """The agent's reply (or the error) of proposal attempt `attempt_id` (the ledger's proposals table)."""
    return Path(root) / RUNS / PROPOSALS / f"{attempt_id:04d}.txt"


def noise_run(root: Path, stamp: str, k: int) -> tuple[Path, Path]:
    """The run folder and log of the k-th repeat (from 1) of an `autoresearch noise` started at `stamp`."""
    name = f"noise-{stamp}-{k}"
    return Path(root) / RUNS / name, Path(root) / RUNS / f"{name}.log"


def state(root: Path, name: str = "") -> Path:
    """The harness's state folder, or a file or folder in it."""
    return Path(root) / STATE / name if name else Path(root) / STATE


def worker_dir(root: Path, name: str) -> Path:
    """A swarm worker's folder on the workspace's machine."""
    return state(root, SWARM) / name


def discarded_ref(exp_id: int) -> str:
    return f"{REF_PREFIX}/discarded/{exp_id:04d}"


def saved_ref(exp_id: int) -> str:
    return f"{REF_PREFIX}/saved/{exp_id:04d}"
