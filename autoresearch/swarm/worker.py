"""One swarm worker: a folder of its own with a git repository, an agent of its own, and the engine's
training and scoring (trial.py) run there. It writes nothing of the workspace: the hub sends it texts
(the workspace's files once, then the frontier's editable files: train.py for the GPT task, and the
history) and receives results (samples, logs, proposals), so a worker on another machine needs no shared
file system, only the package and the prepared data of the workspace's profile or task.

On the workspace's machine the folder is `.autoresearch/swarm/NAME` and its git repository borrows the
workspace's objects (read-only, through git's alternates), so agents that read history with git see the
real commits; elsewhere it is under the data cache. Its refs are its own: whatever an agent does with git
there cannot move the workspace's branch. The folder is removed when the worker stops.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import time
from dataclasses import asdict
from pathlib import Path

from .. import agents, layout, sandbox
from .. import task as tasks
from ..git import git
from ..guard import Session, check_frozen, out_of_scope
from ..harness.paths import cache_dir
from ..harness.settings import Settings
from ..hardware import platform_key
from ..ledger import Experiment, Ledger
from ..recovery import Journal
from ..trial import evaluate, measure

LOG_LIMIT = 2_000_000   # bytes of a run's log sent back to the hub (its end, when longer)
KEEP_RUNS = 3           # models of this worker's latest runs kept for a test score
GITIGNORE = "runs/\nresults.tsv\n.autoresearch/\n__pycache__/\n"


class Worker:
    """Created with the swarm's spec (see driver.worker_spec); every method returns plain data."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.name = spec["name"]
        self.host = socket.gethostname()
        local = spec["host"] == self.host and Path(spec["workspace"]).is_dir()
        self.objects = Path(spec["workspace"]) / ".git" / "objects" if local else None
        base = layout.worker_dir(spec["workspace"], "") if local else cache_dir() / "swarm" / spec["swarm_id"]
        self.root = Path(base) / self.name
        self.session: Session | None = None
        self.agent = None
        self.outstanding = False           # its agent waits for the result of its own proposal
        self.others: list[dict] = []       # other workers' results, told once its own has been

    # -- start and stop --------------------------------------------------------------------------

    def start(self) -> dict:
        """Make the folder, check this machine can run the profile, create the agent. A WorkspaceError
        (no prepared data, another harness version...) says why this worker cannot start."""
        spec, root = self.spec, self.root
        if self.spec.get("threads"):
            os.environ["OMP_NUM_THREADS"] = str(spec["threads"])
        shutil.rmtree(root, ignore_errors=True)   # a folder left by a killed worker of this name
        root.mkdir(parents=True)
        for name, data in spec["files"].items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
        (root / ".gitignore").write_text(GITIGNORE)
        git(root, "init", "--quiet", "--initial-branch", spec["branch"])
        if self.objects is not None:
            (root / ".git" / "objects" / "info" / "alternates").write_text(f"{self.objects}\n")
        for key, value in (("user.name", "autoresearch swarm"), ("user.email", "swarm@autoresearch"),
                           ("gc.auto", "0")):
            git(root, "config", key, value)
        settings = Settings.load(root)
        check_frozen(settings)
        box = sandbox.resolve(spec.get("sandbox"))
        self.session = Session(settings, Ledger(root), box, spec["branch"], tasks.of(root))
        self.agent = agents.create(spec["agent"], root, model=spec.get("model"), base_url=spec.get("base_url"),
                                   timeout=spec.get("request_timeout"), retries=0, seed=spec.get("seed"))
        self.agent.check()
        return {"name": self.name, "host": self.host, "platform": platform_key(self.session.budget),
                "sandbox": box, "folder": str(root)}

    def stop(self) -> None:
        if self.session is not None:
            self.session.ledger.close()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- the frontier ----------------------------------------------------------------------------

    def _write(self, files: dict[str, str]) -> None:
        for name, text in files.items():
            (self.root / name).write_text(text)

    def _editable(self) -> dict[str, str]:
        return {name: (self.root / name).read_text() for name in self.session.task.editable_files(self.root)}

    def _checkout(self, commit: str, files: dict[str, str]) -> None:
        """The folder at the frontier: its commit when the workspace's objects are here, else its editable
        files committed on the worker's own branch."""
        root = self.root
        if self.objects is not None and git(root, "cat-file", "-t", commit, check=False) == "commit":
            git(root, "reset", "--quiet", "--hard", commit)
        else:
            self._write(files)
            git(root, "add", "--all")
            git(root, "commit", "--quiet", "--allow-empty", "-m", f"frontier {commit}")
        git(root, "clean", "--quiet", "-d", "--force")  # anything an agent left (ignored folders stay)

    # -- the work --------------------------------------------------------------------------------

    def propose(self, job: dict) -> dict:
        """Ask the agent for an edit of the frontier's editable files: {"proposal": ..., "files": ...}, or
        {"error": ..., "kind": ...}, or {"rejected": [paths]} when it changed other files."""
        self._checkout(job["parent"], job["files"])
        failure = agents.Failure(**job["failure"]) if job.get("failure") else None
        primary = self.session.task.primary(self.root)
        texts = {primary: job["files"][primary], **job["files"]}   # the primary file first
        ctx = agents.Context(workspace=self.root, program=job["program"], train_py=texts[primary],
                             history=job["history"], budget_seconds=self.session.budget,
                             failure=failure, file=primary, files=texts)
        clock = time.monotonic()
        try:
            proposal = self.agent.propose(ctx)
        except agents.AgentError as e:
            spent = asdict(e.spent) if e.spent is not None else None
            return {"error": str(e), "kind": e.kind, "reply": e.reply, "retry_after": e.retry_after,
                    "spent": spent, "seconds": round(time.monotonic() - clock, 3)}
        self._write(proposal.texts(primary))
        out = {"proposal": asdict(proposal), "seconds": round(time.monotonic() - clock, 3)}
        if offending := out_of_scope(self.root, "HEAD", self.session.task):
            out["rejected"] = offending
        self.outstanding = True
        out["files"] = self._editable()
        return out

    def measure(self, job: dict) -> dict:
        """Run `job["files"]` once with `job["seed"]` and score it on the validation split (a task's evaluator
        that breaks: {"task_error": why})."""
        root = self.root
        self._checkout(job["commit"], job["files"])   # the candidate's whole tree (a task binds its files by git)
        self._write(job["files"])
        name = f"{job['name']}-{hashlib.sha256(str(time.time()).encode()).hexdigest()[:6]}"
        run_dir, log_path = root / layout.RUNS / name, root / layout.RUNS / f"{name}.log"
        earlier = sorted((root / layout.RUNS).glob("*"), key=lambda p: p.stat().st_mtime) \
            if (root / layout.RUNS).exists() else []
        for old in earlier[:-2 * KEEP_RUNS]:   # the last few models stay for a kept one's test score
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
        journal = Journal(root)
        journal.write(phase="swarm", name=job["name"])
        try:
            sample = measure(self.session, run_dir, log_path, journal, job.get("seed"))
        except tasks.TaskError as e:
            journal.clear()
            return {"task_error": str(e), "status": "crash", "error_class": "evaluator", "worker": self.name}
        journal.clear()
        if sample.status != "ok":
            sample.program.unlink(missing_ok=True)
        log = log_path.read_bytes()[-LOG_LIMIT:].decode(errors="replace") if log_path.exists() else ""
        fields = {k: v for k, v in vars(sample).items() if k not in ("run_dir", "log_path", "restored")}
        return {**fields, "log": log, "worker": self.name}

    def score_test(self, job: dict) -> dict:
        """The held-out test split on the model of run `job["run"]` (the hub asks when it kept it); a task's
        evaluator scores that run's folder with the kept candidate's files."""
        gpt = self.session.task.is_gpt
        found = sorted((self.root / layout.RUNS).glob(f"{job['run']}-*/{layout.EXPORTED_MODEL}" if gpt
                                                       else f"{job['run']}-*/"), key=lambda p: p.stat().st_mtime)
        if not found:
            return {"error": "its model is no longer on the worker", "error_class": "missing"}
        if gpt:
            return evaluate(self.session, found[-1], found[-1].parent, "test")
        self._write(job.get("files") or {})
        try:
            return evaluate(self.session, None, found[-1], "test")
        except tasks.TaskError as e:
            return {"task_error": str(e)}

    def observe(self, rows: list[dict]) -> None:
        """Tell the agent experiments' results, in order. Another worker's waits while this worker's own
        proposal is out, so an agent that pairs a proposal with the next result it is told pairs it right."""
        for row in rows:
            self._observe(row)

    def _observe(self, row: dict) -> None:
        if row.get("worker") != self.name and self.outstanding:
            self.others.append(row)
            return
        if row.get("worker") == self.name:
            self.outstanding = False
        for each in [row, *self.others] if not self.outstanding else [row]:
            self.agent.observe(Experiment(**each))
        if not self.outstanding:
            self.others.clear()
