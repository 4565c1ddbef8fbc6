"""`autoresearch loop`: propose an edit, run it, decide, forever (or until a limit).

    autoresearch loop --agent optuna --max-experiments 20

Each iteration builds a fresh context for the agent (program.md, the frontier's train.py, a compact
history from the ledger), asks for a proposal, and hands it to the same code path as `autoresearch run`:
only the guard decides what runs. A crash earns one fix attempt of the same idea, with the error class
and the end of the log; then the loop moves on. Ctrl-C abandons the running experiment cleanly (it is
recorded as interrupted and the tree goes back to the frontier); running the loop again resumes.

A proposal that fails is recorded (the ledger's proposals table, the reply or error in runs/proposals/)
and handled by its kind (agents/base.py): a configuration error (unknown model, rejected key, any other
4xx) stops the loop at once (LoopFailed, exit 2); a transient failure (5xx, timeout, dropped connection)
or an unusable reply is tried again after a back-off that doubles up to MAX_BACKOFF, and after
`max_failures` failures in a row the loop stops (LoopFailed, exit 3) saying what failed last. An error in
`agent.observe()` is printed and the loop goes on: the experiment is already recorded, only the agent's
own learning from it is lost.
"""

from __future__ import annotations

import functools
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from . import agents, layout, selection
from .experiment import Outcome, run_in_session
from .git import git
from .guard import Session, check_task_env, hidden_code, out_of_scope, session
from .harness.settings import Settings
from .ledger import Attempt, Experiment, Ledger
from .noise import NOISE_RUNS, measure_noise
from .workspace import WorkspaceError

HISTORY_ROWS = 40
FIXABLE = {"syntax", "import", "exception", "nan", "oom", "export", "shape", "graph", "causality", "no-submit",
           "exit"}
MAX_BACKOFF = 300.0
MAX_FAILURES = 10       # failed proposals in a row before the loop gives up
BACKOFF = 10.0          # seconds before the first retry; doubled each time, up to MAX_BACKOFF
EXIT_CONFIG, EXIT_FAILURES = 2, 3


class LoopFailed(RuntimeError):
    """The loop stopped because the agent cannot propose: `code` is the exit status, `done` the experiments run."""

    def __init__(self, message: str, code: int, done: int):
        super().__init__(message)
        self.code, self.done = code, done


@dataclass
class Policy:
    """What the loop does when a proposal fails (see the module's docstring)."""

    max_failures: int = MAX_FAILURES
    backoff: float = BACKOFF
    max_backoff: float = MAX_BACKOFF

    def wait(self, failures: int, asked: float | None = None) -> float:
        """Seconds before the next try after `failures` failures in a row (a server's Retry-After wins)."""
        if asked is not None:
            return min(asked, self.max_backoff)
        return min(self.max_backoff, self.backoff * 2 ** (failures - 1))


@dataclass
class Limits:
    max_experiments: int | None = None
    max_hours: float | None = None

    def reached(self, done: int, started: float) -> str | None:
        if self.max_experiments is not None and done >= self.max_experiments:
            return f"{done} experiments done (--max-experiments)"
        if self.max_hours is not None and time.time() - started >= self.max_hours * 3600:
            return f"{self.max_hours:g} h elapsed (--max-hours)"
        return None


def history(ledger: Ledger, branch: str, metric: str = "val_bpb") -> str:
    """One line per experiment of the branch: id, status, the metric, delta, class, description."""
    lines = []
    for e in ledger.all(branch)[-HISTORY_ROWS:]:
        bpb = f"{e.val_bpb:.6f}" if e.val_bpb is not None else "-"
        delta = f"{e.val_bpb - e.frontier_bpb:+.6f}" if e.val_bpb is not None and e.frontier_bpb is not None else ""
        cls = f" [{e.error_class}]" if e.error_class else ""
        lines.append(f"#{e.id} {e.status}{cls} {metric} {bpb} {delta} :: {e.description}")
    return "\n".join(lines)


def editable(s: Session) -> list[str]:
    """The files a proposal may change: train.py, or the task's editable files (the primary one first)."""
    return [layout.CANDIDATE] if s.task.is_gpt else s.task.editable_files(s.root)


def build_context(s: Session, failure: agents.Failure | None = None) -> agents.Context:
    root = s.root
    texts = {name: (root / name).read_text() for name in editable(s)}
    primary = next(iter(texts))
    return agents.Context(workspace=root, program=(root / layout.PROGRAM_MD).read_text(), train_py=texts[primary],
                          history=history(s.ledger, s.branch, s.task.metric), budget_seconds=s.budget, failure=failure,
                          file=primary, files=texts)


def failure_of(root: Path, exp: Experiment, files: list[str] = (layout.CANDIDATE,)) -> agents.Failure:
    diff = git(root, "diff", exp.parent, exp.commit, "--", *files, check=False) if exp.commit else ""
    return agents.Failure(description=exp.description, status=exp.status, error_class=exp.error_class,
                          log_tail=exp.error_excerpt, diff=diff[-6000:])


@dataclass
class View:
    """What the loop shows: a rich live panel on a terminal, one plain timestamped line per event otherwise
    (a log of the night). Experiments are named by their ledger ids in both."""

    agent: str
    started: float = field(default_factory=time.time)
    lines: list[str] = field(default_factory=list)
    best: float | None = None
    live: object = None

    def __post_init__(self):
        if sys.stdout.isatty():
            from rich.live import Live

            self.live = Live(self._render("starting"), refresh_per_second=2, transient=False)
            self.live.start()

    def _render(self, current: str):
        from rich.panel import Panel
        from rich.text import Text

        elapsed = time.time() - self.started
        best = f"{self.best:.6f}" if self.best is not None else "-"
        body = Text(f"now: {current}\nelapsed {elapsed / 60:.1f} min | best val_bpb {best}\n\n" +
                    "\n".join(self.lines[-10:]))
        return Panel(body, title=f"autoresearch loop ({self.agent})")

    def event(self, current: str, line: str | None = None) -> None:
        """`current` is what the panel says is happening; `line` goes to the log (and the panel's list).
        Off a terminal, `current` is printed too: every step of the night is a line."""
        stamp = time.strftime("%H:%M:%S")
        if line:
            self.lines.append(f"{stamp} {line}")
        if self.live is not None:
            self.live.update(self._render(current))
        else:
            print(f"{stamp} {line or current}", flush=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()


def _meta(agent, proposal: agents.Proposal | None) -> dict:
    if proposal is None:
        return {"agent": agent.name}
    return {"agent": agent.name, "model": proposal.model, "input_tokens": proposal.input_tokens,
            "output_tokens": proposal.output_tokens, "cost_usd": proposal.cost_usd,
            "cost_estimated": int(proposal.cost_estimated) if proposal.cost_usd is not None else None,
            "proposal_seconds": round(proposal.seconds, 3)}


def run_loop(root: Path, agent_name: str, limits: Limits, model: str | None = None, base_url: str | None = None,
             rule: str = selection.DEFAULT_RULE, sandbox_mode: str | None = None, noise_runs: int = NOISE_RUNS,
             noise_every: int = 20, policy: Policy | None = None, request_timeout: float | None = None) -> int:
    """The loop; returns the number of experiments run. Raises AgentUnavailable before starting, LoopFailed
    when the agent cannot propose (a configuration error, or too many failures in a row). One session
    (the lock, the ledger, the branch) holds for the whole loop."""
    if rule not in selection.RULES:
        raise WorkspaceError(f"unknown keep rule {rule!r} (known: {', '.join(selection.RULES)})")
    settings = Settings.load(root)
    check_task_env(settings)  # before the agent is asked anything
    # retries=0: the loop owns the back-off (one place, and its waits are printed)
    agent = agents.create(agent_name, settings.root, model=model, base_url=base_url, timeout=request_timeout,
                          retries=0)
    agent.check()
    with session(settings.root, sandbox_mode) as s:
        if stray := out_of_scope(s.root, git(s.root, "rev-parse", "HEAD"), s.task):
            raise WorkspaceError(f"the workspace has changes outside {', '.join(s.task.editable)} (" + ", ".join(stray[:10]) + "); "
                                 "commit, move or remove them before starting the loop")
        return _loop(s, agent, limits, rule, noise_runs, noise_every, policy or Policy())


@dataclass
class _Failed:
    """What a failed proposal attempt leaves for the loop: the error, and the attempt as recorded."""

    error: agents.AgentError
    attempt: Attempt


def _loop(s: Session, agent, limits: Limits, rule: str, noise_runs: int, noise_every: int, policy: Policy) -> int:
    view = View(agent.name)
    run = functools.partial(run_in_session, s, rule=rule, noise_runs=noise_runs)
    started, done, failures = time.time(), 0, 0
    try:
        if s.ledger.frontier(s.branch) is None:  # a fresh branch: its train.py as it is is the baseline
            view.event("baseline", f"running the baseline ({', '.join(s.task.editable)} as it is)")
            outcome = run("baseline", meta={"agent": agent.name})
            _observe(agent, outcome.experiment, view)
            done += 1
            view.best = outcome.experiment.val_bpb
            view.event("baseline done", _result_line(outcome))
            if _interrupted(outcome):
                return done
        while (why := limits.reached(done, started)) is None:
            frontier = s.ledger.frontier(s.branch)
            view.best = frontier.val_bpb if frontier else view.best
            if rule == "noise" and noise_every and done and done % noise_every == 0:
                view.event("noise", f"re-measuring the noise floor ({noise_runs} repeats of the frontier)")
                measure_noise(s, noise_runs)
            outcome = _attempt(s, agent, build_context(s), run, view)
            if isinstance(outcome, _Failed):
                failures = _after_failure(outcome, failures, policy, view, done)
                continue
            failures = 0
            done += 1
            if _interrupted(outcome):
                break
            exp = outcome.experiment
            if exp.status in ("crash", "invalid") and exp.error_class in FIXABLE and limits.reached(done, started) is None:
                fix_ctx = build_context(s, failure_of(s.root, exp, editable(s)))
                outcome = _attempt(s, agent, fix_ctx, run, view, prefix="fix: ")
                if isinstance(outcome, _Failed):
                    failures = _after_failure(outcome, failures, policy, view, done)
                else:
                    done += 1
                    if _interrupted(outcome):
                        break
        if why:
            view.event("stopped", f"loop stopped: {why}")
    except KeyboardInterrupt:
        _restore_frontier(s.root, editable(s))
        view.event("interrupted", "loop interrupted: the workspace is on the frontier; run the loop again to resume")
    except LoopFailed as e:
        e.done = done
        view.event("stopped", f"loop stopped: {e}")
        raise
    finally:
        view.close()
    return done


def _after_failure(failed: _Failed, failures: int, policy: Policy, view: View, done: int) -> int:
    """Stop on a configuration error or too many failures in a row (LoopFailed); else wait. The new count."""
    e, n = failed.error, failures + 1
    where = f" (trace: {failed.attempt.reply_path})" if failed.attempt.reply_path else ""
    if e.kind == agents.CONFIG:
        raise LoopFailed(f"the agent's request is refused, retrying cannot help: {e}{where}", EXIT_CONFIG, done)
    if n >= policy.max_failures:
        raise LoopFailed(f"{n} proposals failed in a row (--max-failures {policy.max_failures}); the last "
                         f"({e.kind}): {e}{where}", EXIT_FAILURES, done)
    wait = policy.wait(n, e.retry_after)
    view.event("waiting", f"retrying in {wait:g} s ({n} of {policy.max_failures} failures in a row)")
    time.sleep(wait)
    return n


def _interrupted(outcome: Outcome) -> bool:
    return outcome.experiment.error_class == "interrupted"


def _result_line(outcome: Outcome) -> str:
    exp = outcome.experiment
    return f"#{exp.id} {outcome.verdict().splitlines()[0]}  :: {exp.description}"


def _observe(agent, exp: Experiment, view: View) -> None:
    """Tell the agent the result; a failure there loses only the agent's learning, never the loop."""
    try:
        agent.observe(exp)
    except Exception as e:  # noqa: BLE001 - any error of a backend's bookkeeping
        last = traceback.format_exception_only(type(e), e)[-1].strip()
        view.event("observe failed", f"warning: {agent.name} could not take in the result of #{exp.id} "
                                     f"(it is recorded; the agent may not learn from it): {last}")


def record_attempt(s: Session, attempt: Attempt, text: str) -> Attempt:
    """Store the attempt in the ledger and its reply (or error) in runs/proposals/NNNN.txt."""
    s.ledger.add_attempt(attempt)
    path = layout.proposal_file(s.root, attempt.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    attempt.reply_path = str(path.relative_to(s.root))
    s.ledger.update_attempt(attempt)
    return attempt


def _attempt_of(s: Session, agent, spent: agents.Proposal | None, seconds: float, outcome: str, error: str = "",
                started: float | None = None) -> Attempt:
    p = spent or agents.Proposal(description="")
    return Attempt(branch=s.branch, agent=agent.name, model=p.model or getattr(agent, "model", None) or "",
                   input_tokens=p.input_tokens, output_tokens=p.output_tokens, cost_usd=p.cost_usd,
                   cost_estimated=int(p.cost_estimated) if p.cost_usd is not None else None,
                   seconds=round(p.seconds or seconds, 3), outcome=outcome, error=error,
                   description=p.description, refused="; ".join(p.refused), started_at=started or time.time())


def _attempt(s: Session, agent, ctx: agents.Context, run, view: View, prefix: str = ""):
    """Ask for one proposal, record the attempt, apply it, run it: the Outcome, or _Failed."""
    root = s.root
    view.event(f"asking {agent.name} for a proposal", f"asking {agent.name} for a proposal"
               + (" (a fix of the crash)" if ctx.failure is not None else ""))
    started, clock = time.time(), time.monotonic()
    try:
        proposal = agent.propose(ctx)
    except agents.AgentError as e:
        for name, text in ctx.texts().items():  # every editable file as before the attempt
            (root / name).write_text(text)
        attempt = _attempt_of(s, agent, e.spent, time.monotonic() - clock, e.kind, str(e), started)
        record_attempt(s, attempt, f"error ({e.kind}): {e}\n" + (f"\n--- reply\n{e.reply}\n" if e.reply else ""))
        refused = f" [refused: {attempt.refused}]" if attempt.refused else ""
        view.event("proposal failed", f"proposal failed ({e.kind}, {attempt.seconds:.1f} s): {e}{refused}")
        return _Failed(e, attempt)
    attempt = record_attempt(s, _attempt_of(s, agent, proposal, time.monotonic() - clock, "proposed", "", started),
                      proposal.reply or "(no reply text)\n")
    for name, text in proposal.texts(ctx.file).items():  # every file the proposal changes
        (root / name).write_text(text)
    description = prefix + proposal.description
    tokens = (f", {proposal.input_tokens or 0:,} tokens in / {proposal.output_tokens or 0:,} out"
              if proposal.input_tokens is not None or proposal.output_tokens is not None else "")
    cost = (f", {'~' if proposal.cost_estimated else ''}${proposal.cost_usd:.4f}"
            + (" (estimate)" if proposal.cost_estimated else "") if proposal.cost_usd is not None else "")
    refused = f"; refused: {attempt.refused}" if attempt.refused else ""
    view.event(f"running: {description}", f"proposal ({proposal.model or agent.name}, {proposal.seconds:.1f} s"
               f"{tokens}{cost}{refused}): {description}")
    outcome = run(description, meta=_meta(agent, proposal))
    attempt.experiment_id = outcome.experiment.id
    s.ledger.update_attempt(attempt)
    if outcome.experiment.status == "rejected":
        _put_aside(root, outcome.experiment)
    _observe(agent, outcome.experiment, view)
    view.event(f"#{outcome.experiment.id} done", _result_line(outcome))
    return outcome


def _put_aside(root: Path, exp: Experiment) -> None:
    """An agent touched files outside train.py: stash everything it changed (kept in `git stash list`)."""
    if exp.parent and git(root, "rev-parse", "HEAD") != exp.parent:
        git(root, "reset", "--quiet", "--soft", exp.parent)  # its commits too, as uncommitted changes
    git(root, "stash", "push", "--include-untracked", "--quiet", "-m",
        f"autoresearch: out-of-scope changes of rejected experiment {exp.id}", check=False)
    quarantine = layout.state(root, layout.QUARANTINE) / layout.run_name(exp.id)
    for name in hidden_code(root):  # code or links hidden where git does not look: kept, out of the guard's way
        if (root / name).is_symlink() or (root / name).exists():
            target = quarantine / name
            target.parent.mkdir(parents=True, exist_ok=True)
            (root / name).replace(target.with_name(target.name + ".quarantined"))


def _restore_frontier(root: Path, files: list[str] = (layout.CANDIDATE,)) -> None:
    """Undo an applied but never-run proposal: train.py (the task's editable files) back to the branch tip."""
    git(root, "checkout", "--", *files, check=False)
