"""`autoresearch swarm`: N workers as Ray actors, fed and watched by the hub in this process.

    autoresearch swarm --workers 4                 # a Ray instance started here, one worker per GPU/core share
    autoresearch swarm --ray auto                  # the workers on a running Ray cluster (`ray start --head`)
    autoresearch swarm --ray 10.0.0.1:6379

Ray places the actors (one GPU each by its own resource accounting; on CPU the cores split between them,
one torch thread pool each) and carries the calls; the hub never trusts a worker for anything but its
samples, and it alone writes the workspace. A worker that dies (its process killed, its machine gone)
surfaces as an error on its call; one that goes silent past the hard timeout is killed. Either way its
claim expires and the others go on. Ctrl-C stops every worker: their experiments in flight are recorded as
interrupted, and running the swarm again resumes from the ledger.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .. import layout, procs, selection
from ..git import git, show_file
from ..guard import out_of_scope, session
from ..harness.settings import Settings
from ..loop import Limits, Policy
from ..recovery import remove_worker_folders
from ..workspace import WorkspaceError
from .hub import Hub, SwarmFailed, WorkerState
from .worker import Worker

POLL = 0.2   # seconds between looks at the workers' calls


@dataclass
class Options:
    workers: int | None = None          # None: one per GPU, else one
    agent: str = "optuna"
    model: str | None = None
    base_url: str | None = None
    rule: str = selection.DEFAULT_RULE
    sandbox: str | None = None
    noise_runs: int = 4
    verify: bool = False
    ray: str | None = None              # None: a Ray instance of our own; else the address of a cluster
    max_failures: int = 10
    backoff: float = 10.0
    request_timeout: float | None = None
    threads: int | None = None          # torch threads per worker on CPU (default: the cores split evenly)


def _gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - no torch, a broken driver: no GPU
        return 0


def _start_ray(opts: Options, root: Path, workers: int):
    import ray

    if ray.is_initialized():
        return ray, False
    # Ray's own processes inherit this mark: if the hub is killed, the next session's recovery finds and
    # stops any of them still running (procs.kill_owned)
    os.environ[procs.OWNER_ENV] = str(root)
    common = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR", configure_logging=False)
    if opts.ray:
        ray.init(address=opts.ray, **common)
        return ray, True
    # as many CPUs as the workers asked for take (more workers than cores share them, as the user asked)
    ray.init(num_cpus=max(os.cpu_count() or 1, workers), num_gpus=_gpus(), **common)
    return ray, True


def worker_spec(root: Path, branch: str, opts: Options, name: str, index: int, threads: int | None,
                swarm_id: str) -> dict:
    # the workspace's files as committed (the task's evaluator and data preparation too); the worker's own
    # .gitignore keeps its run folders out of its commits
    files = {name: show_file(root, "HEAD", name) for name in git(root, "ls-files", "-z").split("\0")
             if name and name != ".gitignore"}
    return {"name": name, "workspace": str(root), "host": socket.gethostname(), "swarm_id": swarm_id,
            "branch": branch, "files": files, "agent": opts.agent, "model": opts.model, "base_url": opts.base_url,
            "request_timeout": opts.request_timeout, "sandbox": opts.sandbox, "threads": threads, "seed": index}


def run_swarm(root: Path, opts: Options, limits: Limits, say=print, worker_class=Worker) -> tuple[int, Hub]:
    """The swarm; returns the experiments finished this session and the hub. Raises SwarmFailed when it
    cannot go on. `worker_class` stands in for Worker in bench/bench_swarm.py (the hub's own overhead)."""
    if opts.rule not in selection.RULES:
        raise WorkspaceError(f"unknown keep rule {opts.rule!r} (known: {', '.join(selection.RULES)})")
    settings = Settings.load(root)
    with session(settings.root, opts.sandbox) as s:
        editable = [layout.CANDIDATE] if s.task.is_gpt else s.task.editable_files(s.root)
        if stray := out_of_scope(s.root, git(s.root, "rev-parse", "HEAD"), s.task) + \
                [p for p in editable if git(s.root, "status", "--porcelain", "--", p)]:
            raise WorkspaceError("the workspace has uncommitted changes (" + ", ".join(stray[:10]) + "); the swarm "
                                 "works from the branch: commit (`autoresearch run`), move or remove them first")
        hub = Hub(s, opts.rule, opts.noise_runs, opts.verify, Policy(opts.max_failures, opts.backoff),
                  agent_name=opts.agent, say=say)
        return _Swarm(hub, opts, limits, say, worker_class).run(), hub


class _Swarm:
    def __init__(self, hub: Hub, opts: Options, limits: Limits, say, worker_class=Worker):
        self.hub, self.opts, self.limits, self.say = hub, opts, limits, say
        self.worker_class = worker_class
        self.states: dict[str, WorkerState] = {}
        self.actors: dict = {}
        self.inflight: dict = {}     # ObjectRef -> (worker name, job)
        self.started = time.time()

    # -- start ---------------------------------------------------------------------------------

    def _launch(self, ray) -> None:
        hub, opts = self.hub, self.opts
        gpus = _gpus() if not opts.ray else int(ray.cluster_resources().get("GPU", 0))
        n = opts.workers or max(1, gpus)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        threads = opts.threads or (None if gpus else max(1, cpus // n))
        swarm_id = uuid.uuid4().hex[:8]
        remote = ray.remote(self.worker_class)
        starting = {}
        for i in range(n):
            name = f"w{i + 1}"
            spec = worker_spec(hub.root, hub.branch, opts, name, i + 1, threads, swarm_id)
            actor = remote.options(num_cpus=threads or 1, num_gpus=1 if gpus else 0, max_restarts=0,
                                   max_task_retries=0).remote(spec)
            self.actors[name] = actor
            starting[name] = actor.start.remote()
        for name, ref in starting.items():
            try:
                info = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - whatever stops this worker must not stop the others
                self.say(f"swarm: {name} cannot start: {_cause(e)}")
                ray.kill(self.actors.pop(name))
                continue
            self.states[name] = WorkerState(name, host=info["host"], platform=info["platform"])
            self.say(f"swarm: {name} on {info['host']} ({info['platform']}; sandbox {info['sandbox']})")
        if not self.states:
            raise SwarmFailed("no worker could start (see the reasons above)", 1)
        for exp in hub.ledger.all(hub.branch):   # a resumed swarm: every agent learns what was done
            if exp.status != "running":
                for st in self.states.values():
                    st.pending_observe.append(vars(exp) | {"worker": ""})

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> int:
        ray, owned = _start_ray(self.opts, self.hub.root, self.opts.workers or max(1, _gpus()))
        try:
            self._launch(ray)
            self._loop(ray)
        except KeyboardInterrupt:
            self.say("swarm: interrupted; stopping the workers (their experiments in flight are recorded as "
                     "interrupted; run the swarm again to resume)")
            self._abandon("interrupted by the user")
        except BaseException:
            self._abandon("the swarm stopped on an error")
            raise
        finally:
            self._stop(ray, owned)
        return self.hub.done

    def _loop(self, ray) -> None:
        hub = self.hub
        task = hub.task
        rules = hub.s.profile.time_rules if task.is_gpt else task
        limit = rules.hard_timeout + 2 * rules.eval_timeout + 60
        stopping = None
        while True:
            stopping = stopping or self.limits.reached(hub.done + len(hub.candidates), self.started)
            if stopping and not self.inflight and not hub.queue:
                self.say(f"swarm: stopped: {stopping}")
                return
            self._tell(ray)
            for st in self._idle():
                job = hub.next_job(st)
                if job is None or (stopping and job["method"] == "propose"):
                    continue
                if job.get("kind") == "frontier" and stopping:
                    hub.frontier_jobs[(st.platform, job["commit"])] -= 1
                    continue
                st.job, st.since = job, time.monotonic()
                self.inflight[getattr(self.actors[st.name], job["method"]).remote(job)] = (st.name, job)
            if not any(not st.gone for st in self.states.values()):
                raise SwarmFailed("every worker has stopped (see the reasons above)", 3)
            if not self.inflight:
                time.sleep(POLL)
                continue
            refs = list(self.inflight)
            ready, rest = ray.wait(refs, num_returns=1, timeout=POLL)
            if ready and rest:   # every other result that is in too, handled in one pass
                ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
            for ref in ready:
                self._collect(ray, ref)
            now = time.monotonic()
            for ref, (name, job) in list(self.inflight.items()):
                st = self.states[name]
                if job["method"] != "propose" and now - st.since > limit and not st.gone:
                    self.say(f"swarm: {name} silent for {now - st.since:.0f} s (limit {limit:g} s); stopping it")
                    st.gone = f"silent past {limit:g} s"
                    ray.kill(self.actors[name])

    def _idle(self) -> list[WorkerState]:
        return [st for st in self.states.values() if st.job is None and not st.gone]

    def _collect(self, ray, ref) -> None:
        name, job = self.inflight.pop(ref)
        st = self.states[name]
        st.job = None
        try:
            result = ray.get(ref)
        except Exception as e:  # noqa: BLE001 - the worker died, or its call raised
            why = _cause(e)
            if _died(e) or st.gone:
                st.gone = st.gone or f"its process died ({why})"
                self.say(f"swarm: {name} is gone: {st.gone}")
                self.hub.lost(st, job, f"{name} {st.gone}")
            else:   # a harness error on the worker (a full disk there, say): its experiment is lost
                self.say(f"swarm: {name}: {job['method']} failed: {why}")
                self.hub.lost(st, job, f"{name}: {why}")
            return
        if job["method"] == "propose":
            self.hub.proposed(st, job, result)
        elif job["method"] == "measure":
            self.hub.measured(st, job, result)
        elif job["method"] == "score_test":
            self.hub.tested(job, result)

    def _tell(self, ray) -> None:
        """Every finished experiment goes to every agent (between jobs, so a worker's calls stay in order)."""
        for exp in self.hub.finished:
            for st in self.states.values():
                st.pending_observe.append(vars(exp).copy())
        self.hub.finished.clear()
        for st in self.states.values():
            if st.gone or st.job is not None or not st.pending_observe:
                continue
            # one call per worker with every row since its last (each call costs the hub, at any scale)
            self.actors[st.name].observe.remote([dict(row) for row in st.pending_observe])
            st.pending_observe.clear()

    # -- stop ----------------------------------------------------------------------------------

    def _abandon(self, why: str) -> None:
        for name, job in self.inflight.values():
            self.hub.lost(self.states[name], job, why)
            self.states[name].gone = self.states[name].gone or why   # busy: stopped without waiting
        self.inflight.clear()

    def _stop(self, ray, owned: bool) -> None:
        # idle workers remove their folders themselves; busy or gone ones are killed (folders removed below)
        stops = {name: actor.stop.remote() for name, actor in self.actors.items()
                 if not self.states.get(name, WorkerState(name)).gone}
        try:
            ray.wait(list(stops.values()), num_returns=len(stops), timeout=30)
        except Exception:  # noqa: BLE001 - a worker already gone
            pass
        for actor in self.actors.values():
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001
                pass
        if owned:
            ray.shutdown()
        remove_worker_folders(self.hub.root)   # anything a killed worker left on this machine
        if self.hub.latencies:
            lat = sorted(self.hub.latencies)
            self.say(f"swarm: {self.hub.done} experiment(s); hub decision latency median "
                     f"{lat[len(lat) // 2] * 1000:.1f} ms, max {lat[-1] * 1000:.1f} ms")


def _died(e: Exception) -> bool:
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, WorkerCrashedError

    return isinstance(e, (ActorDiedError, RayActorError, ActorUnavailableError, WorkerCrashedError))


def _cause(e: Exception) -> str:
    """The worker's own error message, without Ray's wrapping."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__
