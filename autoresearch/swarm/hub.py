"""The swarm's hub: the one writer of the workspace's branch and ledger, and the one place that decides.

Workers propose and measure; the hub does everything that changes the truth, one result at a time:
  claims       before a candidate trains, its change (a hash of the lines it adds and removes) is claimed;
               the same change on the same parent, or one running anywhere, is a duplicate and is skipped
  records      every result, failures included, with its worker, host, platform and parent commit
  decisions    the engine's keep rule (selection.decide) on samples of ONE platform: the candidate's and
               its parent's as measured there; a platform measures each frontier commit itself before any
               candidate of it is decided, and keeps its own noise floor
  stale        a candidate that would be kept (or confirmed) but whose parent is no longer the frontier is
               re-applied on the frontier (a three-way merge of each editable file) and re-run as a new experiment,
               or recorded `stale` when the merge conflicts: nothing advances the frontier from an old parent
  the branch   a keep is written to the ledger first, then the workspace is moved to the new commit, so a
               hub killed in between is put right when the swarm starts again (the ledger is the truth)
  claims lost  a worker that died or went silent past the hard timeout loses its claim: its experiment is
               recorded once as `crash` (`lost`), and nothing else of it is waited for

Any task: a candidate is the texts of the task's editable files (train.py for the GPT task), its value the
task's metric, compared in the task's direction.

The hub works on the workspace's session (guard.session: the lock, recovery, frozen checks), so a swarm
and `autoresearch run` never write the same workspace at once.
"""

from __future__ import annotations

import hashlib
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

from .. import agents, layout, selection
from ..git import commit_files, git, merge_text, show_file
from ..guard import Session
from ..harness.protocol import DEFAULT_SEED
from ..ledger import Attempt, Experiment
from ..loop import FIXABLE, Policy, history, record_attempt

NOT_RESULTS = ("lost", "interrupted")   # a change whose run never ended may be tried again


class SwarmFailed(RuntimeError):
    """The swarm cannot go on (every worker gone, an agent's configuration refused): `code` is the exit status."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def change_hash(parent: dict[str, str], files: dict[str, str]) -> str:
    """The claim's key: the lines a candidate removes and adds, in order, without line numbers or context
    (the same edit made by two workers hashes the same); with several editable files, under each file's name."""
    import difflib

    names = sorted(set(parent) | set(files))
    lines = []
    for name in names:
        old, new = parent.get(name, ""), files.get(name, "")
        if old == new:
            continue
        if len(names) > 1:
            lines.append(f"@@ {name}")
        lines += [line for line in difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=0)
                  if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


@dataclass
class WorkerState:
    """What the hub knows of one worker."""
    name: str
    host: str = ""
    platform: str = ""
    job: dict | None = None          # what it is doing now
    since: float = 0.0               # monotonic time the job was sent
    failures: int = 0                # failed proposals in a row
    not_before: float = 0.0          # back-off after a failed proposal
    fix: dict | None = None          # a crash of its own to try to fix next (the loop's one fix attempt)
    gone: str = ""                   # why it stopped ("" while it works)
    pending_observe: list = field(default_factory=list)


@dataclass
class Candidate:
    """An experiment between its claim and its decision."""
    exp: Experiment
    files: dict[str, str]            # the editable files' texts
    worker: str
    platform: str
    values: list[float] = field(default_factory=list)
    workers: set[str] = field(default_factory=set)
    last_run: tuple = ("", "")       # (worker, run name) of its last measured run: where its model is
    waiting: bool = False            # its result is in; it waits for its parent to be measured on its platform
    arrived: float = 0.0             # when the result that it waits with arrived (decision latency)
    note: str = ""                   # a task's secondary metrics of its first run


class Hub:
    def __init__(self, s: Session, rule: str = selection.DEFAULT_RULE, noise_runs: int = 4, verify: bool = False,
                 policy: Policy | None = None, agent_name: str = "", say=print):
        self.s, self.ledger, self.root, self.branch = s, s.ledger, s.root, s.branch
        self.rule, self.noise_runs, self.verify = rule, noise_runs, verify
        self.policy = policy or Policy()   # the loop's rule for failed proposals, per worker
        self.say, self.agent_name = say, agent_name
        self.queue: list[dict] = []                  # jobs waiting for a worker: confirmations, tests, verifies
        self.finished: list[Experiment] = []         # experiments every agent is to be told about
        self.program = (self.root / layout.PROGRAM_MD).read_text()
        self.candidates: dict[int, Candidate] = {}
        self.frontier_jobs: Counter = Counter()      # (platform, commit) -> measurements in flight
        self.latencies: list[float] = []             # seconds from a result's arrival to its decision
        self.done = 0                                # experiments finished this session
        self.baseline_id: int | None = None          # the baseline's experiment while it runs
        self.task = s.task
        self._texts: dict[str, dict] = {}            # the editable files of each commit asked for (commits never change)
        self._history: tuple[int, str] | None = None  # (experiments finished, the history text then)
        self.settle_branch()

    # -- the branch ------------------------------------------------------------------------------

    def frontier(self) -> Experiment | None:
        return self.ledger.frontier(self.branch)

    def settle_branch(self) -> None:
        """Put the workspace on the ledger's frontier (a hub killed between recording a keep and moving the
        branch left it behind; an agent's git command in a worker folder cannot move it, but a person can)."""
        front = self.frontier()
        head = git(self.root, "rev-parse", "HEAD")
        if front is None or front.commit == head:
            return
        if git(self.root, "status", "--porcelain", "--untracked-files=no"):
            stash = git(self.root, "stash", "create", "autoresearch swarm: edits present when the branch moved")
            if stash:
                git(self.root, "update-ref", f"{layout.REF_PREFIX}/saved/swarm-{int(time.time())}", stash)
        git(self.root, "reset", "--quiet", "--hard", front.commit)
        self.say(f"hub: the workspace moved to the frontier {front.short} (it was at {head[:7]})")

    def _text(self, commit: str) -> dict[str, str]:
        """The texts of the task's editable files at `commit`."""
        if commit not in self._texts:
            names = [p for p in git(self.root, "ls-tree", "-r", "--name-only", commit).splitlines()
                     if self.task.is_editable(p)]
            self._texts[commit] = {p: show_file(self.root, commit, p).decode() for p in names}
        return self._texts[commit]

    def history(self) -> str:
        """The agents' history table, rebuilt only when an experiment has finished since."""
        if self._history is None or self._history[0] != self.done:
            self._history = (self.done, history(self.ledger, self.branch, self.task.metric))
        return self._history[1]

    # -- what a worker does next -----------------------------------------------------------------

    def next_job(self, w: WorkerState) -> dict | None:
        """The next job for an idle worker, or None (nothing it can do now)."""
        now = time.monotonic()
        if w.gone or now < w.not_before:
            return None
        for job in self.queue:
            if job.get("worker", w.name) == w.name and job.get("platform", w.platform) == w.platform \
                    and w.name not in job.get("not_workers", ()):
                self.queue.remove(job)
                return job
        front = self.frontier()
        if front is None:
            if self.baseline_id is not None:
                return None
            return self._baseline(w)
        need = self._frontier_need(w.platform, front.commit)
        if need > 0:
            self.frontier_jobs[(w.platform, front.commit)] += 1
            seed = DEFAULT_SEED + 100 + len(self.ledger.platform_samples(self.branch, front.commit, w.platform)) \
                + self.frontier_jobs[(w.platform, front.commit)]
            return {"method": "measure", "kind": "frontier", "commit": front.commit, "name": f"frontier-{front.short}",
                    "files": self._text(front.commit), "seed": seed, "platform": w.platform}
        job = {"method": "propose", "parent": front.commit, "files": self._text(front.commit),
               "program": self.program, "history": self.history(), "failure": None}
        if w.fix is not None:
            job["failure"], w.fix = w.fix, None
        return job

    def _frontier_need(self, platform: str, commit: str) -> int:
        """How many more runs of the frontier `platform` needs before its candidates can be decided."""
        have = len(self.ledger.platform_samples(self.branch, commit, platform))
        want = 1
        if self.rule == "noise" and not self._floor(platform):
            want = 1 + self.noise_runs   # no noise floor on this platform yet: repeats of the frontier
        return want - have - self.frontier_jobs[(platform, commit)]

    def _floor(self, platform: str) -> selection.NoiseFloor | None:
        """The platform's noise floor once it rests on as many repeats as `autoresearch noise` takes."""
        floor = selection.pooled_noise(self.ledger.sample_groups(self.branch, platform))
        return floor if floor is not None and floor.dof >= self.noise_runs else None

    def _baseline(self, w: WorkerState) -> dict:
        head = git(self.root, "rev-parse", "HEAD")
        text = self._text(head)
        exp = Experiment(branch=self.branch, parent=head, description="baseline", rule=self.rule,
                         worker=w.name, host=w.host, platform=w.platform, diff_hash=change_hash(text, text),
                         agent=self.agent_name)
        exp.commit = commit_files(self.root, head, text, "baseline")
        self._claim(exp)
        self.baseline_id = exp.id
        self.candidates[exp.id] = Candidate(exp, text, w.name, w.platform)
        return {**self._measure_job(self.candidates[exp.id], "experiment", 0), "worker": w.name}

    def _measure_job(self, cand: Candidate, kind: str, n: int) -> dict:
        return {"method": "measure", "kind": kind, "exp": cand.exp.id, "commit": cand.exp.commit,
                "name": layout.run_name(cand.exp.id, n + 1 if n else None), "files": cand.files,
                "seed": DEFAULT_SEED + n, "platform": cand.platform}

    def _claim(self, exp: Experiment) -> None:
        self.ledger.insert(exp)
        exp.log_path = str(layout.run_log(self.root, exp.id).relative_to(self.root))
        self.ledger.update(exp)

    # -- proposals -------------------------------------------------------------------------------

    def proposed(self, w: WorkerState, job: dict, result: dict) -> None:
        """A worker's proposal came back: record it, claim it, and queue its first training run."""
        spent = result.get("proposal") or result.get("spent") or {}
        attempt = Attempt(branch=self.branch, agent=f"{self.agent_name}@{w.name}", model=spent.get("model") or "",
                          input_tokens=spent.get("input_tokens"), output_tokens=spent.get("output_tokens"),
                          cost_usd=spent.get("cost_usd"),
                          cost_estimated=int(bool(spent.get("cost_estimated"))) if spent.get("cost_usd") is not None else None,
                          seconds=result.get("seconds"), description=spent.get("description") or "",
                          refused="; ".join(spent.get("refused") or []), started_at=time.time() - (result.get("seconds") or 0))
        if "error" in result:
            attempt.outcome, attempt.error = result["kind"], result["error"]
            record_attempt(self.s, attempt, f"error ({result['kind']}): {result['error']}\n"
                          + (f"\n--- reply\n{result['reply']}\n" if result.get("reply") else ""))
            self._proposal_failed(w, result)
            return None
        w.failures = 0
        attempt.outcome = "proposed"
        record_attempt(self.s, attempt, spent.get("reply") or "(no reply text)\n")
        parent, text = job["parent"], result["files"]
        prefix = "fix: " if job.get("failure") else ""
        exp = Experiment(branch=self.branch, parent=parent, description=prefix + (spent.get("description") or ""),
                         rule=self.rule, worker=w.name, host=w.host, platform=w.platform,
                         diff_hash=change_hash(job["files"], text), agent=self.agent_name,
                         model=spent.get("model") or "", input_tokens=spent.get("input_tokens"),
                         output_tokens=spent.get("output_tokens"), cost_usd=spent.get("cost_usd"),
                         cost_estimated=attempt.cost_estimated, proposal_seconds=result.get("seconds"),
                         frontier_bpb=self._bar(parent, w.platform))
        if result.get("rejected"):
            exp.status, exp.error_class = "rejected", "scope"
            only = ", ".join(self.task.editable) if not self.task.is_gpt else layout.CANDIDATE
            exp.error_excerpt = f"only {only} may change; also changed: " + ", ".join(result["rejected"][:20])
            exp.reason = f"guard: changes outside {only}, nothing was run"
            exp.finished_at = time.time()
            self.ledger.insert(exp)
            self._finished(exp, attempt)
            return None
        if (other := self._duplicate(exp)) is not None:
            attempt.outcome, attempt.error = "duplicate", f"the same change as experiment #{other.id} ({other.status})"
            self.ledger.update_attempt(attempt)
            self.say(f"hub: {w.name}'s proposal is the same change as #{other.id} ({other.status}); skipped")
            w.pending_observe.append(vars(Experiment(branch=self.branch, parent=parent, commit=other.commit,
                                                     status="crash", error_class="duplicate", worker=w.name,
                                                     description=exp.description)))
            return None
        exp.commit = commit_files(self.root, parent, text, exp.description)
        self._claim(exp)
        attempt.experiment_id = exp.id
        self.ledger.update_attempt(attempt)
        self.candidates[exp.id] = Candidate(exp, text, w.name, w.platform)
        self.queue.insert(0, {**self._measure_job(self.candidates[exp.id], "experiment", 0), "worker": w.name})

    def _proposal_failed(self, w: WorkerState, result: dict) -> None:
        w.failures += 1
        if result["kind"] == agents.CONFIG:
            raise SwarmFailed(f"{w.name}: the agent's request is refused, retrying cannot help: {result['error']}", 2)
        if w.failures >= self.policy.max_failures:
            w.gone = f"{w.failures} proposals failed in a row; the last ({result['kind']}): {result['error']}"
            self.say(f"hub: {w.name} stops: {w.gone}")
            return
        wait = self.policy.wait(w.failures, result.get("retry_after"))
        w.not_before = time.monotonic() + wait
        self.say(f"hub: {w.name}'s proposal failed ({result['kind']}): {result['error']}; retrying in {wait:g} s")

    def _duplicate(self, exp: Experiment) -> Experiment | None:
        """An experiment with the same change that is running, or finished on the same parent (a run that
        was lost or interrupted did not finish: its change may be tried again)."""
        for other in self.ledger.by_change(self.branch, exp.diff_hash):
            if (other.status == "running" or other.parent == exp.parent) and other.status != "rejected" \
                    and other.error_class not in NOT_RESULTS:
                return other
        return None

    def _bar(self, parent: str, platform: str) -> float | None:
        values = self.ledger.platform_samples(self.branch, parent, platform)
        return statistics.fmean(values) if values else None

    # -- measurements ----------------------------------------------------------------------------

    def measured(self, w: WorkerState, job: dict, result: dict) -> None:
        """A training run came back: record it; decide what its experiment needs next (another run, a
        test score: queued) or finish it."""
        arrived = time.monotonic()
        kind, commit = job["kind"], job["commit"]
        if "task_error" in result:   # the task's own evaluator broke: no candidate is to blame, nothing can go on
            self.lost(w, job, "the task's evaluator failed")
            raise SwarmFailed(f"{w.name}: {result['task_error']}; fix the task (its evaluator), then run again", 1)
        log_rel = self._save_log(job, result)
        exp_id = job.get("exp")
        self.ledger.add_run(self.branch, commit, kind if kind != "verify" else "confirm", job["seed"],
                            result.get("val_bpb"), result["status"], result.get("error_class", ""), log_rel,
                            experiment_id=exp_id, platform=w.platform, worker=w.name)
        if kind == "frontier":
            self.frontier_jobs[(w.platform, commit)] -= 1
            shown = f"{result['val_bpb']:.6f}" if result.get("val_bpb") is not None else result["status"]
            self.say(f"hub: {w.name} measured the frontier {commit[:7]} on its platform: {shown}")
            self._decide_waiting()
            return
        cand = self.candidates.get(exp_id)
        if cand is None:  # its claim expired meanwhile: already recorded as lost
            return
        exp = cand.exp
        cand.workers.add(w.name)
        if kind == "experiment":
            exp.sandbox = result.get("sandbox") or exp.sandbox
            cand.note = result.get("note") or ""
            for name in ("memory_gb", "steps", "params_m", "mfu_percent", "training_seconds", "startup_seconds",
                         "export_seconds", "train_wall_seconds", "eval_wall_seconds"):
                setattr(exp, name, result.get(name))
        if result["status"] != "ok":
            if kind == "experiment" or result["status"] == "invalid":
                exp.status, exp.error_class = result["status"], result["error_class"]
                exp.error_excerpt = result.get("error_excerpt", "")
                exp.reason = f"{exp.status}: {exp.error_class}"
                if kind == "experiment" and exp.status in ("crash", "invalid") and exp.error_class in FIXABLE \
                        and not exp.description.startswith("fix: "):
                    self._offer_fix(w, exp)
            else:
                exp.status, exp.reason = "discard", f"the {kind} run failed ({result['status']}: {result['error_class']})"
            self._finish(cand)
            return
        cand.values.append(result["val_bpb"])
        cand.last_run = (w.name, job["name"])
        cand.arrived = arrived
        self._decide(cand)
        self.latencies.append(time.monotonic() - arrived)   # the hub's work on one result: decide, record, git

    def _save_log(self, job: dict, result: dict) -> str:
        if job["kind"] == "frontier":
            path = self.root / layout.RUNS / f"{job['name']}-{time.strftime('%Y%m%d-%H%M%S')}-{result['worker']}.log"
        else:
            path = self.root / layout.RUNS / f"{job['name']}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(result.get("log", ""))
        return str(path.relative_to(self.root))

    def _offer_fix(self, w: WorkerState, exp: Experiment) -> None:
        diff = git(self.root, "diff", exp.parent, exp.commit, "--", *sorted(self._text(exp.commit)), check=False)
        w.fix = {"description": exp.description, "status": exp.status, "error_class": exp.error_class,
                 "log_tail": exp.error_excerpt, "diff": diff[-6000:]}

    def _decide_waiting(self) -> None:
        for cand in list(self.candidates.values()):
            if cand.waiting:
                cand.waiting = False
                self._decide(cand)

    def _decide(self, cand: Candidate) -> None:
        """The keep rule on one platform's samples; queues what the candidate needs next, if anything."""
        exp, front = cand.exp, self.frontier()
        if front is None:   # the baseline: compared with nothing
            self._conclude(cand, selection.decide(cand.values, None, self.rule, direction=self.task.direction))
            return
        parent_values = self.ledger.platform_samples(self.branch, exp.parent, cand.platform)
        if not parent_values:
            if exp.parent != front.commit:   # an old parent nobody measures any more on this platform
                self._stale(cand, "its parent was never measured on its platform and is no longer the frontier")
                return
            cand.waiting = True   # the frontier's run on this platform is on its way
            return
        noise = self._floor(cand.platform) if self.rule == "noise" else None
        if self.rule == "noise" and noise is None:
            cand.waiting = True   # the platform's noise floor is being measured
            return
        exp.frontier_bpb = statistics.fmean(parent_values)
        decision = selection.decide(cand.values, parent_values, self.rule, noise, direction=self.task.direction)
        if decision.verdict in ("keep", "confirm") and exp.parent != front.commit:
            self._stale(cand, f"the frontier moved from {exp.parent[:7]} to {front.short} while it ran")
            return
        if decision.verdict == "confirm":
            self.say(f"hub: #{exp.id} {decision.reason}; another run")
            self.queue.insert(0, {**self._measure_job(cand, "confirm", len(cand.values)), "platform": cand.platform})
            return
        if decision.verdict == "keep" and self.verify and len(cand.workers) < 2:
            # a second worker of the platform runs it before anyone builds on it
            self.say(f"hub: #{exp.id} would be kept ({decision.reason}); a second worker verifies it first")
            self.queue.insert(0, {**self._measure_job(cand, "verify", len(cand.values)), "platform": cand.platform,
                                  "not_workers": sorted(cand.workers)})
            return
        self._conclude(cand, decision)

    def _conclude(self, cand: Candidate, decision: selection.Decision) -> None:
        exp = cand.exp
        exp.val_bpb = statistics.fmean(cand.values)
        exp.samples = len(cand.values)
        exp.status, exp.reason = decision.verdict, decision.reason + (f" ({cand.note})" if cand.note else "")
        self._finish(cand)

    def _stale(self, cand: Candidate, why: str) -> None:
        """Re-apply the candidate's change on the frontier and run it again, or record it stale."""
        exp, front = cand.exp, self.frontier()
        exp.val_bpb = statistics.fmean(cand.values)
        exp.samples = len(cand.values)
        exp.status = "stale"
        merged = _merge(self._text(exp.parent), self._text(front.commit), cand.files)
        if isinstance(merged, str):
            exp.reason = f"stale: {why}; its change does not apply on the frontier (a conflict in {merged})"
            self._finish(cand)
            return
        again = Experiment(branch=self.branch, parent=front.commit, description=exp.description, rule=self.rule,
                           worker=cand.worker, host=exp.host, platform=cand.platform, diff_hash=exp.diff_hash,
                           agent=exp.agent, model=exp.model, frontier_bpb=self._bar(front.commit, cand.platform))
        again.commit = commit_files(self.root, front.commit, merged, exp.description)
        self._claim(again)
        exp.reason = f"stale: {why}; re-applied on {front.short} as experiment #{again.id}"
        self.say(f"hub: #{exp.id} {exp.reason}")
        self._finish(cand)
        self.candidates[again.id] = Candidate(again, merged, cand.worker, cand.platform)
        self.queue.insert(0, {**self._measure_job(self.candidates[again.id], "experiment", 0),
                              "platform": cand.platform})

    def _finish(self, cand: Candidate) -> None:
        """Record the decision; a keep moves the workspace (ledger first, then git), and the worker that
        holds its last model scores it on the test split (queued)."""
        exp = cand.exp
        exp.finished_at = time.time()
        exp.total_seconds = round(exp.finished_at - exp.started_at, 2)
        self.candidates.pop(exp.id, None)
        self.ledger.update(exp)
        if exp.id == self.baseline_id:
            self.baseline_id = None
        if exp.status == "keep":
            self.settle_branch()
            worker, run = cand.last_run
            self.queue.insert(0, {"method": "score_test", "exp": exp.id, "run": run, "worker": worker,
                                  "files": cand.files})
        elif exp.commit:
            git(self.root, "update-ref", layout.discarded_ref(exp.id), exp.commit)
        self.done += 1
        self.say(f"hub: #{exp.id} {exp.status:8s} {_value(exp, self.task.metric)} ({cand.worker}, {cand.platform.split(' |')[0]}) "
                 f":: {exp.description}" + (f"\n     {exp.reason}" if exp.reason else ""))
        self._finished(exp, None)

    def _finished(self, exp: Experiment, attempt: Attempt | None) -> None:
        self.finished.append(exp)
        if attempt is not None:
            attempt.experiment_id = exp.id
            self.ledger.update_attempt(attempt)

    def tested(self, job: dict, result: dict) -> None:
        exp = self.ledger.get(job["exp"])
        if exp is None:
            return
        if "task_error" in result:
            result = {"error": result["task_error"], "error_class": "evaluator"}
        if "error" in result:
            exp.reason += f"; test split not scored ({result.get('error_class')}: {result['error']})"
        else:
            exp.test_bpb = result.get("test_bpb")
            if result.get("metrics"):
                exp.reason += "; test " + ", ".join(f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}"
                                                    for k, v in result["metrics"].items())
        self.ledger.update(exp)

    # -- lost claims -----------------------------------------------------------------------------

    def lost(self, w: WorkerState, job: dict | None, why: str) -> None:
        """A worker died or went silent: its claim expires, its experiment is recorded once as lost."""
        if job is None:
            return
        if job.get("kind") == "frontier":
            self.frontier_jobs[(w.platform, job["commit"])] -= 1
        cand = self.candidates.pop(job.get("exp"), None) if job.get("method") == "measure" else None
        if cand is None:
            return
        exp = cand.exp
        exp.status, exp.error_class = "crash", "lost"
        exp.reason = f"lost: {why}; its claim expired"
        if cand.values:
            exp.val_bpb = statistics.fmean(cand.values)
        self._finish(cand)


def _merge(base: dict[str, str], front: dict[str, str], files: dict[str, str]) -> dict[str, str] | str:
    """The candidate's change re-applied on the frontier, file by file (a three-way merge each): the merged
    texts, or the name of the first file that conflicts."""
    merged = {}
    for name in sorted(files):
        text = merge_text(base.get(name, ""), front.get(name, ""), files[name])
        if text is None:
            return name
        merged[name] = text
    return merged


def _value(exp: Experiment, metric: str = "val_bpb") -> str:
    if exp.val_bpb is None:
        return f"[{exp.error_class}]" if exp.error_class else ""
    delta = f" ({exp.val_bpb - exp.frontier_bpb:+.6f})" if exp.frontier_bpb is not None else ""
    return f"{metric} {exp.val_bpb:.6f}{delta}"
