"""The ledger: every experiment, one row each, in SQLite inside the workspace; `results.tsv` is its view.

    .autoresearch/ledger.sqlite   the truth (untracked): ids, parents, commits, metrics, errors, timings
    results.tsv                   the original's five tab-separated columns, rewritten after every change

A row is inserted as `running` before anything runs and updated once at the end, so an interrupted
experiment is never lost and never recorded twice. `results.tsv` is rewritten whole (temp file + rename)
from the ledger; if someone edited it by hand since our last write, their copy is kept beside it first.
A corrupt ledger is moved aside and rebuilt from `results.tsv` and the git refs.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from . import layout
from .layout import RESULTS_TSV
TSV_HEADER = "commit\tval_bpb\tmemory_gb\tstatus\tdescription"
STATUSES = ("running", "keep", "discard", "crash", "timeout", "rejected", "invalid", "stale")


@dataclass
class Experiment:
    id: int | None = None
    branch: str = ""
    parent: str = ""            # frontier commit the candidate was compared with
    commit: str = ""            # the candidate's commit ("" when rejected before committing)
    status: str = "running"
    description: str = ""
    val_bpb: float | None = None
    frontier_bpb: float | None = None
    memory_gb: float | None = None
    training_seconds: float | None = None
    total_seconds: float | None = None
    train_wall_seconds: float | None = None   # the train.py process, launch to exit
    eval_wall_seconds: float | None = None    # the evaluator process
    steps: int | None = None
    params_m: float | None = None
    mfu_percent: float | None = None
    error_class: str = ""
    error_excerpt: str = ""
    reason: str = ""            # why the decision was taken
    rule: str = ""              # the keep rule it was judged by (strict | noise)
    samples: int | None = None  # training runs averaged into val_bpb (2 after a confirmation run)
    test_bpb: float | None = None   # kept experiments only: the held-out test split, never used to decide
    sandbox: str = ""           # bwrap | none
    startup_seconds: float | None = None  # launch to clock start, as the harness saw it
    export_seconds: float | None = None   # submit to the exported model on disk
    log_path: str = ""
    agent: str = ""             # who proposed it ("" = a human or an agent driving `run` itself)
    model: str = ""
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    cost_estimated: int | None = None     # 1: cost_usd is an estimate (e.g. Claude Code's list price)
    proposal_seconds: float | None = None
    worker: str = ""            # the swarm worker that trained it ("" = a single-machine run)
    host: str = ""
    platform: str = ""          # what it was measured on (swarm: device, count, torch, budget)
    diff_hash: str = ""         # the swarm's claim: a hash of the change against its parent
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    @property
    def short(self) -> str:
        return self.commit[:7]


@dataclass
class Attempt:
    """One request for a proposal, whatever came of it (the `proposals` table); the agent's reply or the
    error is kept in runs/proposals/NNNN.txt (layout.proposal_file)."""

    id: int | None = None
    branch: str = ""
    experiment_id: int | None = None   # the experiment it became, if any
    agent: str = ""
    model: str = ""                    # as the server reported it, else as requested
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None      # None: unknown
    cost_estimated: int | None = None
    seconds: float | None = None
    outcome: str = ""                  # proposed | config | transient | reply (the kinds of AgentError)
    error: str = ""
    description: str = ""
    refused: str = ""                  # "Tool path; Tool path": edits the agent was refused
    reply_path: str = ""               # relative to the workspace
    started_at: float = field(default_factory=time.time)


@dataclass
class Run:
    """One training run of a commit (the `runs` table): kind experiment | confirm | noise | frontier; status ok,
    crash, ... `platform` and `worker` name where a swarm measured it (None: a single-machine run)."""

    id: int | None = None
    experiment_id: int | None = None
    branch: str = ""
    commit_sha: str = ""
    kind: str = ""
    seed: int | None = None
    val_bpb: float | None = None
    status: str = ""
    error_class: str = ""
    log_path: str = ""
    finished_at: float = field(default_factory=time.time)
    platform: str | None = None
    worker: str | None = None


_INTEGER = {"steps", "input_tokens", "output_tokens", "samples", "cost_estimated", "experiment_id", "seed"}
_REAL = {"val_bpb", "frontier_bpb", "memory_gb", "training_seconds", "total_seconds", "train_wall_seconds",
         "eval_wall_seconds", "params_m", "mfu_percent", "started_at", "finished_at", "cost_usd", "proposal_seconds",
         "test_bpb", "startup_seconds", "export_seconds", "seconds"}


def _column(name: str) -> str:
    return f'"{name}" ' + ("INTEGER" if name in _INTEGER else "REAL" if name in _REAL else "TEXT")


def _table(db: sqlite3.Connection, name: str, row_type) -> None:
    """Create table `name` for the dataclass `row_type`, or add the columns an older ledger lacks."""
    cols = ", ".join(["id INTEGER PRIMARY KEY AUTOINCREMENT"] + [_column(f.name) for f in fields(row_type)[1:]])
    db.execute(f"CREATE TABLE IF NOT EXISTS {name} ({cols})")
    present = {row[1] for row in db.execute(f"PRAGMA table_info({name})")}
    for f in fields(row_type):
        if f.name not in present:
            db.execute(f"ALTER TABLE {name} ADD COLUMN {_column(f.name)}")


def _create(db: sqlite3.Connection) -> None:
    """Create the tables, and add any table or column a newer harness knows to a ledger made by an older one."""
    _table(db, "experiments", Experiment)
    _table(db, "proposals", Attempt)
    db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
    _table(db, "runs", Run)
    db.execute("CREATE TABLE IF NOT EXISTS noise (id INTEGER PRIMARY KEY AUTOINCREMENT, branch TEXT, "
               "commit_sha TEXT, runs INTEGER, mean REAL, std REAL, values_json TEXT, measured_at REAL)")


def _names(values: dict, suffix: str = "") -> str:
    return ", ".join(f'"{name}"{suffix}' for name in values)


_FIELDS = {f.name for f in fields(Experiment)}


def _experiment(row: sqlite3.Row) -> Experiment:
    return Experiment(**{k: v for k, v in dict(row).items() if k in _FIELDS})


class LedgerError(RuntimeError):
    pass


class Ledger:
    """The workspace's results store. `readonly=True` (status, show, report, lineage: commands a user may
    run in another terminal while an experiment trains) opens it for reading only: no schema upgrade, no
    write, no checkpoint when it closes."""

    def __init__(self, root: Path, readonly: bool = False):
        self.root = Path(root)
        self.dir = layout.state(self.root)
        self.path = self.dir / layout.LEDGER_DB
        self.tsv = self.root / RESULTS_TSV
        self.readonly = readonly and self.path.exists()  # a missing ledger is created (empty) either way
        self.dir.mkdir(exist_ok=True)
        self._open()

    @property
    def files(self) -> tuple[Path, Path, Path]:
        """The database and SQLite's two companions (write-ahead log, shared-memory index)."""
        return self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")

    # -- connection -------------------------------------------------------------------------------

    def _open(self) -> None:
        if self.readonly:
            try:
                self.db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=30,
                                          isolation_level=None)
                self.db.row_factory = sqlite3.Row
                if self.db.execute("PRAGMA quick_check").fetchone()[0] == "ok":
                    return
                self.db.close()
            except sqlite3.DatabaseError:
                pass
            self.readonly = False  # a damaged ledger: the normal open moves it aside and rebuilds it
        try:
            self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self.db.row_factory = sqlite3.Row
            if self.db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("quick_check failed")
            self.db.execute("PRAGMA journal_mode=WAL")
            _create(self.db)
        except sqlite3.DatabaseError as e:
            if "full" in str(e).lower():
                raise LedgerError(f"cannot write the ledger {self.path}: the disk is full") from None
            self._rebuild_from_corrupt(e)

    def _rebuild_from_corrupt(self, error: Exception) -> None:
        if getattr(self, "db", None) is not None:
            self.db.close()
        aside = self.path.with_name(f"{layout.LEDGER_DB}.corrupt-{int(time.time())}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                src.replace(Path(str(aside) + suffix))
        self.rebuilt_from = aside
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        _create(self.db)
        self.import_tsv(reason=f"rebuilt from results.tsv after a corrupt ledger ({error}); old file kept at {aside.name}")

    def close(self) -> None:
        self.db.close()

    def checkpoint(self) -> None:
        """Move the write-ahead log into the main file and empty it."""
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def snapshot(self) -> bytes:
        """The whole database as one file image, read through this connection.

        The tripwire compares and restores the ledger through this, never by opening its files: closing
        any other descriptor of a file drops every POSIX lock this process holds on it, SQLite's own
        included, and the next connection to close would then think it was the last and delete the WAL."""
        return self.db.serialize()

    def reopen(self) -> None:
        """After the files were put back from a snapshot (tripwire.py): a fresh connection, a fresh index."""
        self.db.close()
        Path(str(self.path) + "-shm").unlink(missing_ok=True)
        self._open()

    # -- rows -------------------------------------------------------------------------------------

    def insert(self, exp: Experiment) -> Experiment:
        values = {k: v for k, v in vars(exp).items() if k != "id"}
        exp.id = self._insert("experiments", values)
        return exp

    def update(self, exp: Experiment) -> None:
        values = {k: v for k, v in vars(exp).items() if k != "id"}
        self._update("experiments", values, exp.id)
        if exp.status != "running":   # results.tsv lists finished experiments only
            self.write_tsv()

    def _insert(self, table: str, values: dict) -> int:
        try:
            cur = self.db.execute(f"INSERT INTO {table} ({_names(values)}) VALUES ({', '.join('?' * len(values))})",
                                  list(values.values()))
        except sqlite3.OperationalError as e:
            raise LedgerError(f"cannot write the ledger {self.path}: {e}") from None
        return cur.lastrowid

    def _update(self, table: str, values: dict, row_id: int) -> None:
        try:
            self.db.execute(f"UPDATE {table} SET {_names(values, ' = ?')} WHERE id = ?", [*values.values(), row_id])
        except sqlite3.OperationalError as e:
            raise LedgerError(f"cannot write the ledger {self.path}: {e}") from None

    def delete(self, exp_id: int) -> None:
        """Remove an experiment that never got a result and its runs (a task whose evaluator is broken)."""
        try:
            self.db.execute("DELETE FROM runs WHERE experiment_id = ?", (exp_id,))
            self.db.execute("DELETE FROM experiments WHERE id = ?", (exp_id,))
        except sqlite3.OperationalError as e:
            raise LedgerError(f"cannot write the ledger {self.path}: {e}") from None

    def get(self, exp_id: int) -> Experiment | None:
        row = self.db.execute("SELECT * FROM experiments WHERE id = ?", (exp_id,)).fetchone()
        return _experiment(row) if row else None

    def all(self, branch: str | None = None) -> list[Experiment]:
        if branch is None:
            rows = self.db.execute("SELECT * FROM experiments ORDER BY id").fetchall()
        else:
            rows = self.db.execute("SELECT * FROM experiments WHERE branch = ? ORDER BY id", (branch,)).fetchall()
        return [_experiment(r) for r in rows]

    def running(self) -> list[Experiment]:
        rows = self.db.execute("SELECT * FROM experiments WHERE status = 'running' ORDER BY id").fetchall()
        return [_experiment(r) for r in rows]

    def by_change(self, branch: str, diff_hash: str) -> list[Experiment]:
        """The experiments of `branch` whose change hashes to `diff_hash` (the swarm's claims)."""
        rows = self.db.execute("SELECT * FROM experiments WHERE branch = ? AND diff_hash = ? ORDER BY id",
                               (branch, diff_hash)).fetchall()
        return [_experiment(r) for r in rows]

    def frontier(self, branch: str) -> Experiment | None:
        """The last kept experiment of `branch`: its commit is the branch tip, its val_bpb the bar."""
        row = self.db.execute(
            "SELECT * FROM experiments WHERE branch = ? AND status = 'keep' ORDER BY id DESC LIMIT 1", (branch,)
        ).fetchone()
        return _experiment(row) if row else None

    # -- proposal attempts ------------------------------------------------------------------------

    def add_attempt(self, attempt: Attempt) -> Attempt:
        attempt.id = self._insert("proposals", {k: v for k, v in vars(attempt).items() if k != "id"})
        return attempt

    def update_attempt(self, attempt: Attempt) -> None:
        self._update("proposals", {k: v for k, v in vars(attempt).items() if k != "id"}, attempt.id)

    def attempts(self, branch: str | None = None) -> list[Attempt]:
        """Every proposal attempt (of `branch`), oldest first; none in a read-only ledger older than the table."""
        query, args = ("SELECT * FROM proposals ORDER BY id", ()) if branch is None else \
            ("SELECT * FROM proposals WHERE branch = ? ORDER BY id", (branch,))
        try:
            rows = self.db.execute(query, args).fetchall()
        except sqlite3.OperationalError:
            return []
        names = {f.name for f in fields(Attempt)}
        return [Attempt(**{k: v for k, v in dict(r).items() if k in names}) for r in rows]

    # -- training runs and the noise floor ---------------------------------------------------------

    def add_run(self, branch: str, commit: str, kind: str, seed: int, val_bpb: float | None, status: str,
                error_class: str = "", log_path: str = "", experiment_id: int | None = None,
                platform: str | None = None, worker: str | None = None) -> None:
        """One training run of `commit` (see Run)."""
        run = Run(experiment_id=experiment_id, branch=branch, commit_sha=commit, kind=kind, seed=seed, val_bpb=val_bpb,
                  status=status, error_class=error_class, log_path=log_path, platform=platform, worker=worker)
        self._insert("runs", {k: v for k, v in vars(run).items() if k != "id"})

    def runs(self, branch: str) -> list[dict]:
        rows = self.db.execute("SELECT * FROM runs WHERE branch = ? ORDER BY id", (branch,)).fetchall()
        return [dict(r) for r in rows]

    def samples(self, branch: str, commit: str) -> list[float]:
        """Every valid val_bpb measured for `commit` on `branch` (its own runs, confirmations, repeats)."""
        rows = self.db.execute("SELECT val_bpb FROM runs WHERE branch = ? AND commit_sha = ? AND status = 'ok' "
                               "AND val_bpb IS NOT NULL AND platform IS NULL ORDER BY id",   # not a swarm's
                               (branch, commit)).fetchall()
        if rows:
            return [r[0] for r in rows]
        older = self.db.execute("SELECT val_bpb FROM experiments WHERE branch = ? AND \"commit\" = ? AND "
                                "val_bpb IS NOT NULL AND status IN ('keep', 'discard')", (branch, commit)).fetchall()
        return [r[0] for r in older]  # a ledger from before runs were recorded one by one

    def platform_samples(self, branch: str, commit: str, platform: str) -> list[float]:
        """Every valid val_bpb of `commit` measured on `platform` (the swarm compares within one platform)."""
        rows = self.db.execute("SELECT val_bpb FROM runs WHERE branch = ? AND commit_sha = ? AND status = 'ok' "
                               "AND val_bpb IS NOT NULL AND platform = ? ORDER BY id", (branch, commit, platform))
        return [r[0] for r in rows.fetchall()]

    def sample_groups(self, branch: str, platform: str | None = None) -> list[list[float]]:
        """Valid val_bpb per commit and platform of `branch` (only `platform`'s, when given): what the pooled
        noise floor is estimated from (runs of one commit on two platforms are two groups, never one)."""
        groups: dict[tuple, list[float]] = {}
        for r in self.runs(branch):
            if platform is not None and r.get("platform") != platform:
                continue
            if r["status"] == "ok" and r["val_bpb"] is not None:
                groups.setdefault((r["commit_sha"], r.get("platform")), []).append(r["val_bpb"])
        return list(groups.values())

    def add_noise(self, branch: str, commit: str, values: list[float], mean: float, std: float) -> None:
        self.db.execute("INSERT INTO noise (branch, commit_sha, runs, mean, std, values_json, measured_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (branch, commit, len(values), mean, std, json.dumps(values), time.time()))

    def noise_measurements(self, branch: str) -> list[dict]:
        rows = self.db.execute("SELECT * FROM noise WHERE branch = ? ORDER BY id", (branch,)).fetchall()
        return [dict(r) | {"values": json.loads(r["values_json"])} for r in rows]

    # -- results.tsv ------------------------------------------------------------------------------

    def tsv_text(self) -> str:
        lines = [TSV_HEADER]
        for exp in self.all():
            if exp.status == "running":
                continue
            bpb = f"{exp.val_bpb:.6f}" if exp.val_bpb is not None and exp.status in ("keep", "discard") else "0.000000"
            mem = f"{exp.memory_gb:.1f}" if exp.memory_gb is not None and exp.status in ("keep", "discard") else "0.0"
            desc = " ".join(exp.description.split())  # tabs and newlines would break the columns
            lines.append(f"{exp.short or '-------'}\t{bpb}\t{mem}\t{exp.status}\t{desc}")
        return "\n".join(lines) + "\n"

    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def write_tsv(self) -> None:
        text = self.tsv_text()
        if self.tsv.exists():
            current = self.tsv.read_bytes()
            ours = self._meta("tsv_sha256")
            if ours is not None and hashlib.sha256(current).hexdigest() != ours and current.decode(errors="replace") != text:
                self.tsv.replace(self.tsv.with_name(f"{RESULTS_TSV}.edited-{int(time.time())}"))
            elif ours is None and current.decode(errors="replace") not in (text, TSV_HEADER + "\n"):
                self.tsv.replace(self.tsv.with_name(f"{RESULTS_TSV}.before-autoresearch"))
        tmp = self.tsv.with_name(RESULTS_TSV + ".tmp")
        try:
            tmp.write_text(text)
            tmp.replace(self.tsv)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise LedgerError(f"cannot write {self.tsv}: {e}") from None
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('tsv_sha256', ?)", (hashlib.sha256(text.encode()).hexdigest(),))

    def import_tsv(self, reason: str) -> int:
        """Rows of an existing results.tsv, as ledger rows (what can be recovered of a lost ledger)."""
        if not self.tsv.exists():
            return 0
        from .git import current_branch, git

        branch = current_branch(self.root) or ""
        count = 0
        for line in self.tsv.read_text().splitlines()[1:]:
            parts = line.split("\t")
            if len(parts) < 5 or parts[3] not in STATUSES:
                continue
            short, bpb, mem, status, desc = parts[0], float(parts[1]), float(parts[2]), parts[3], "\t".join(parts[4:])
            commit = git(self.root, "rev-parse", "--verify", "--quiet", short + "^{commit}", check=False) or short
            self.insert(Experiment(branch=branch, commit=commit, status=status, description=desc,
                                   val_bpb=bpb if status in ("keep", "discard") else None,
                                   memory_gb=mem if status in ("keep", "discard") else None,
                                   reason=reason, finished_at=time.time()))
            count += 1
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('tsv_sha256', ?)",
                        (hashlib.sha256(self.tsv.read_bytes()).hexdigest(),))
        return count
