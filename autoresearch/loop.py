"""`autoresearch loop`: propose an edit, run it, decide, forever (or until a limit).

    autoresearch loop --agent optuna --max-experiments 20

Each iteration builds a fresh context for the agent (program.md, the frontier's train.py, a compact
history from the ledger), asks for a proposal, and hands it to the same code path as `autoresearch run`:
only the guard decides what runs. A crash earns one fix attempt of the same idea, with the error class
and the end of the log; then the loop moves on. Ctrl-C abandons the running experiment cleanly (it is
recorded as interrupted and the tree goes back to the frontier); running the loop again resumes.
"""

from __future__ import annotations

import functools
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import agents, layout, selection
from .experiment import Outcome, run_in_session
from .git import git
from .guard import Session, hidden_code, out_of_scope, session
from .harness.settings import Settings
from .ledger import Experiment, Ledger
from .noise import NOISE_RUNS, measure_noise
from .workspace import WorkspaceError

HISTORY_ROWS = 40
FIXABLE = {"syntax", "import", "exception", "nan", "oom", "export", "shape", "graph", "causality", "no-submit",
           "exit"}
MAX_BACKOFF = 300.0


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


def history(ledger: Ledger, branch: str) -> str:
    """One line per experiment of the branch: id, status, val_bpb, delta, class, description."""
    lines = []
    for e in ledger.all(branch)[-HISTORY_ROWS:]:
        bpb = f"{e.val_bpb:.6f}" if e.val_bpb is not None else "-"
        delta = f"{e.val_bpb - e.frontier_bpb:+.6f}" if e.val_bpb is not None and e.frontier_bpb is not None else ""
        cls = f" [{e.error_class}]" if e.error_class else ""
        lines.append(f"#{e.id} {e.status}{cls} val_bpb {bpb} {delta} :: {e.description}")
    return "\n".join(lines)


def build_context(s: Session, failure: agents.Failure | None = None) -> agents.Context:
    root = s.root
    return agents.Context(workspace=root, program=(root / layout.PROGRAM_MD).read_text(),
                          train_py=(root / layout.CANDIDATE).read_text(), history=history(s.ledger, s.branch),
                          budget_seconds=s.profile.time_budget, failure=failure)


def failure_of(root: Path, exp: Experiment) -> agents.Failure:
    diff = git(root, "diff", exp.parent, exp.commit, "--", layout.CANDIDATE, check=False) if exp.commit else ""
    return agents.Failure(description=exp.description, status=exp.status, error_class=exp.error_class,
                          log_tail=exp.error_excerpt, diff=diff[-6000:])


@dataclass
class View:
    """What the loop shows: a rich live panel on a terminal, one plain line per event otherwise."""

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
        if line:
            self.lines.append(line)
        if self.live is not None:
            self.live.update(self._render(current))
        elif line:
            print(line, flush=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()


def _meta(agent, proposal: agents.Proposal | None) -> dict:
    if proposal is None:
        return {"agent": agent.name}
    return {"agent": agent.name, "model": proposal.model, "input_tokens": proposal.input_tokens,
            "output_tokens": proposal.output_tokens, "cost_usd": proposal.cost_usd,
            "proposal_seconds": round(proposal.seconds, 3)}


def run_loop(root: Path, agent_name: str, limits: Limits, model: str | None = None, base_url: str | None = None,
             rule: str = selection.DEFAULT_RULE, sandbox_mode: str | None = None, noise_runs: int = NOISE_RUNS,
             noise_every: int = 20) -> int:
    """The loop; returns the number of experiments run. Raises AgentUnavailable before starting. One session
    (the lock, the ledger, the branch) holds for the whole loop."""
    if rule not in selection.RULES:
        raise WorkspaceError(f"unknown keep rule {rule!r} (known: {', '.join(selection.RULES)})")
    settings = Settings.load(root)
    agent = agents.create(agent_name, settings.root, model=model, base_url=base_url)
    agent.check()
    with session(settings.root, sandbox_mode) as s:
        if stray := out_of_scope(s.root, git(s.root, "rev-parse", "HEAD")):
            raise WorkspaceError("the workspace has changes outside train.py (" + ", ".join(stray[:10]) + "); "
                                 "commit, move or remove them before starting the loop")
        return _loop(s, agent, limits, rule, noise_runs, noise_every)


def _loop(s: Session, agent, limits: Limits, rule: str, noise_runs: int, noise_every: int) -> int:
    view = View(agent.name)
    run = functools.partial(run_in_session, s, rule=rule, noise_runs=noise_runs)
    started, done, errors = time.time(), 0, 0
    try:
        if s.ledger.frontier(s.branch) is None:  # a fresh branch: its train.py as it is is the baseline
            view.event("baseline", None)
            outcome = run("baseline", meta={"agent": agent.name})
            agent.observe(outcome.experiment)
            done += 1
            view.best = outcome.experiment.val_bpb
            view.event("baseline done", f"#{outcome.experiment.id} " + outcome.verdict().splitlines()[0])
            if _interrupted(outcome):
                return done
        while (why := limits.reached(done, started)) is None:
            frontier = s.ledger.frontier(s.branch)
            view.best = frontier.val_bpb if frontier else view.best
            if rule == "noise" and noise_every and done and done % noise_every == 0:
                view.event("noise", f"re-measuring the noise floor ({noise_runs} repeats of the frontier)")
                measure_noise(s, noise_runs)
            outcome, proposal = _attempt(s, agent, build_context(s), run, view, done)
            if outcome is None:  # the agent failed to propose: back off, never give up
                errors += 1
                time.sleep(min(MAX_BACKOFF, 2.0 ** errors))
                continue
            errors = 0
            done += 1
            if _interrupted(outcome):
                break
            exp = outcome.experiment
            if exp.status in ("crash", "invalid") and exp.error_class in FIXABLE and limits.reached(done, started) is None:
                fix_ctx = build_context(s, failure_of(s.root, exp))
                outcome, _ = _attempt(s, agent, fix_ctx, run, view, done, prefix="fix: ")
                if outcome is not None:
                    done += 1
                    if _interrupted(outcome):
                        break
        if why:
            view.event("stopped", f"loop stopped: {why}")
    except KeyboardInterrupt:
        _restore_frontier(s.root)
        view.event("interrupted", "loop interrupted: the workspace is on the frontier; run the loop again to resume")
    finally:
        view.close()
    return done


def _interrupted(outcome: Outcome) -> bool:
    return outcome.experiment.error_class == "interrupted"


def _attempt(s: Session, agent, ctx: agents.Context, run, view: View, done: int, prefix: str = ""):
    """Ask for one proposal, apply it, run it; (None, None) if the agent produced nothing runnable."""
    root = s.root
    view.event(f"#{done + 1}: asking {agent.name} for a proposal")
    try:
        proposal = agent.propose(ctx)
    except agents.AgentError as e:
        view.event("proposal failed", f"proposal failed: {e}")
        _restore_frontier(root)
        return None, None
    if proposal.train_py is not None:
        (root / layout.CANDIDATE).write_text(proposal.train_py)
    description = prefix + proposal.description
    view.event(f"#{done + 1}: running: {description}")
    outcome = run(description, meta=_meta(agent, proposal))
    if outcome.experiment.status == "rejected":
        _put_aside(root, outcome.experiment)
    agent.observe(outcome.experiment)
    view.event(f"#{done + 1} done", f"#{outcome.experiment.id} " + outcome.verdict().splitlines()[0])
    return outcome, proposal


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


def _restore_frontier(root: Path) -> None:
    """Undo an applied but never-run proposal: train.py back to the branch tip."""
    git(root, "checkout", "--", layout.CANDIDATE, check=False)
