"""The `autoresearch` command: a thin typer app over the modules that do the work."""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="An agent improves train.py; a frozen harness judges it.")
err = Console(stderr=True, soft_wrap=True)


def clean_errors(fn):
    """Known failures print one clear line and exit 1 instead of a traceback; a task that needs a variable
    of the user's environment that is not set (an endpoint to grade with) exits 2, a configuration error."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .git import GitError
        from .harness.download import DownloadError
        from .ledger import LedgerError
        from .sandbox import SandboxError
        from .task import TaskUnready
        from .workspace import WorkspaceError

        try:
            return fn(*args, **kwargs)
        except TaskUnready as e:
            err.print(f"[bold red]error:[/] {e}", highlight=False)
            raise typer.Exit(2)
        except (WorkspaceError, GitError, DownloadError, LedgerError, SandboxError, FileNotFoundError, ValueError,
                OSError) as e:
            err.print(f"[bold red]error:[/] {e}", highlight=False)
            raise typer.Exit(1)

    return wrapper


@app.command()
@clean_errors
def init(
    directory: Path = typer.Argument(..., help="Directory of the new workspace (empty or new)."),
    profile: Optional[str] = typer.Option(None, "--profile", "-p", help="The GPT task's profile: h100, small or cpu "
                                          "(see `autoresearch profiles`)."),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="A built-in task (see `autoresearch tasks`) or the "
                                       "path of a task folder with a task.toml (default: gpt)."),
    budget: Optional[float] = typer.Option(None, help="The GPT task's training budget in seconds (frozen for the "
                                           "workspace)."),
    tag: Optional[str] = typer.Option(None, help="Run tag; the branch is autoresearch/<tag> (default: today, e.g. nov22)."),
):
    """Create a workspace: git repo, the task's files (train.py, program.md), frozen autoresearch.toml."""
    from . import task as tasks
    from .git import current_branch
    from .workspace import init_task_workspace, init_workspace

    folder = tasks.find(task) if task else None
    if folder is not None:
        if profile is not None or budget is not None:
            raise ValueError("--profile and --budget are the GPT task's options; a task's budget is in its task.toml")
        settings = init_task_workspace(directory, folder, tag)
        t = tasks.of(settings.root)
        err.print(f"workspace [bold]{settings.root}[/] on branch [bold]{current_branch(settings.root)}[/]: task "
                  f"{t.name}, editable {', '.join(t.editable)}, metric {t.metric} ({t.direction}), budget {t.budget:g}s")
        if t.requires_env:
            err.print(f"this task needs {' and '.join(t.requires_env)} set to run: {t.requires_help}",
                      highlight=False)
        err.print(f"next: cd {settings.root} && autoresearch prepare && autoresearch run -m baseline")
        return
    if profile is None:
        raise ValueError("the GPT task needs --profile (h100, small or cpu); or choose another task with --task")
    settings = init_workspace(directory, profile, budget, tag)

    p = settings.profile
    err.print(f"workspace [bold]{settings.root}[/] on branch [bold]{current_branch(settings.root)}[/]: "
              f"profile {p.name}, budget {p.time_budget:g}s, seq {p.max_seq_len}, vocab {p.vocab_size}")
    err.print(f"next: cd {settings.root} && autoresearch prepare && python train.py")


@app.command()
@clean_errors
def prepare(
    profile: Optional[str] = typer.Option(None, "--profile", "-p", help="Profile to prepare (default: the workspace's)."),
    num_shards: Optional[int] = typer.Option(None, help="climbmix training shards to download (h100 profile)."),
    force: bool = typer.Option(False, help="Rebuild even if already prepared."),
):
    """Download data, train the tokenizer, tokenize into memmaps (once; a second run does nothing)."""
    from .harness.download import NetworkUnavailable
    from .harness.prepare import prepare as run_prepare
    from .harness.profiles import get_profile
    from .workspace import open_workspace, pin_data

    settings = None
    if profile is None:
        try:
            settings = open_workspace()
        except FileNotFoundError:
            raise WorkspaceHint() from None
        if settings.profile is None:  # a task workspace: its prepare step, into the cache
            from .workspace import prepare_task

            folder, pinned = prepare_task(settings, force=force)
            err.print(f"task data in {folder}" + (" (fingerprint pinned in autoresearch.toml, committed)"
                                                  if pinned else ""), highlight=False)
            return
        prof = settings.profile
    else:
        prof = get_profile(profile)
    if num_shards is not None:
        if prof.dataset != "climbmix":
            raise ValueError("--num-shards applies to the climbmix dataset (h100 profile) only")
        from dataclasses import replace

        prof = replace(prof, num_shards=num_shards)
    try:
        manifest = run_prepare(prof, force=force)
    except NetworkUnavailable as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False)
        raise typer.Exit(2)
    if settings is not None and pin_data(settings, manifest):
        err.print("pinned data and tokenizer fingerprints in autoresearch.toml (committed)")
    from .harness.prepare import describe_scoring
    from .harness.settings import METRIC_VERSION

    for line in describe_scoring(prof, settings.metric_version if settings is not None else METRIC_VERSION):
        err.print(line, highlight=False)


class WorkspaceHint(ValueError):
    def __init__(self):
        super().__init__("not inside a workspace: run `autoresearch init DIR --profile NAME` first, "
                         "or pass --profile to prepare a profile's data without one")


def _workspace_root() -> Path:
    from .workspace import open_workspace

    return open_workspace().root


RULE_HELP = ("Keep rule: noise (keep only improvements that clear the measured noise floor; a close call gets "
             "a confirmation run) or strict (any improvement, like the original).")
SANDBOX_HELP = "Sandbox for train.py and the evaluator: auto (bubblewrap where it works), require, off."
NOISE_RUNS_HELP = "Repeats of the frontier when the noise floor must be measured."


def _rule_option():
    return typer.Option(None, "--rule", envvar="AUTORESEARCH_RULE", help=RULE_HELP + " Default: the task's (noise).")


def _rule(rule: str | None) -> str:
    """The keep rule asked for, else the workspace task's default."""
    from .task import of

    return rule or of(_workspace_root()).rule


def _sandbox_option():
    return typer.Option(None, "--sandbox", envvar="AUTORESEARCH_SANDBOX", help=SANDBOX_HELP)


# the agent's options, the same for `loop` and `swarm`
def _agent_option():
    return typer.Option("optuna", "--agent", "-a", help="optuna (offline default), openai, anthropic, claude, codex.")


def _max_experiments_option():
    return typer.Option(None, help="Stop after this many experiments (default: never).")


def _max_hours_option():
    return typer.Option(None, help="Stop after this many hours (default: never).")


def _model_option():
    return typer.Option(None, help="Model name for the agent (else $AUTORESEARCH_MODEL or its default).")


def _base_url_option():
    return typer.Option(None, help="Server URL for openai/anthropic (else their env vars).")


@app.command()
@clean_errors
def run(
    message: str = typer.Option(..., "--message", "-m", help="What this experiment tries (the commit message)."),
    rule: str = _rule_option(),
    sandbox: Optional[str] = _sandbox_option(),
    noise_runs: int = typer.Option(4, help=NOISE_RUNS_HELP),
):
    """Run ONE experiment on the current train.py: guard, commit, train, evaluate, keep or reset, record."""
    from .experiment import run_experiment

    outcome = run_experiment(_workspace_root(), message, rule=_rule(rule), sandbox_mode=sandbox, noise_runs=noise_runs)
    print(outcome.verdict(), flush=True)
    raise typer.Exit(outcome.exit_code)


@app.command()
@clean_errors
def noise(
    runs: int = typer.Option(4, "--runs", "-k", help="How many repeats of the frontier (other seeds)."),
    sandbox: Optional[str] = _sandbox_option(),
    as_json: bool = typer.Option(False, "--json", help="Print the measurement as JSON."),
):
    """Measure the noise floor: K repeats of the frontier with other seeds, stored in the ledger."""
    import json

    from .noise import run_noise

    m = run_noise(_workspace_root(), runs, sandbox)
    if as_json:
        print(json.dumps(m, indent=2))
        return
    std = f"{m['std']:.6f}" if m["std"] == m["std"] else "-"
    pooled = f"{m['pooled_std']:.6f} ({m['pooled_dof']} dof)" if m["pooled_std"] is not None else "-"
    print(f"noise of {m['commit'][:7]} over {len(m['values'])} run(s): mean {m['mean']:.6f}, std {std} "
          f"(frontier's own run {m['frontier_bpb']:.6f}); pooled noise floor of the branch: {pooled}")


@app.command()
@clean_errors
def loop(
    agent: str = _agent_option(),
    max_experiments: Optional[int] = _max_experiments_option(),
    max_hours: Optional[float] = _max_hours_option(),
    model: Optional[str] = _model_option(),
    base_url: Optional[str] = _base_url_option(),
    rule: str = _rule_option(),
    sandbox: Optional[str] = _sandbox_option(),
    noise_runs: int = typer.Option(4, help=NOISE_RUNS_HELP),
    noise_every: int = typer.Option(20, help="Re-measure the noise floor on the frontier every N experiments "
                                    "(0: only when missing)."),
    max_failures: int = typer.Option(10, min=1, help="Stop (exit 3) after this many failed proposals in a row "
                                     "(server errors, timeouts, dropped connections, replies that cannot be used)."),
    backoff: float = typer.Option(10.0, min=0.0, help="Seconds before retrying a failed proposal; doubled after "
                                  "each failure in a row, up to 300."),
    request_timeout: Optional[float] = typer.Option(None, min=1.0, help="Seconds one proposal may take: the "
                                                    "HTTP request, or the CLI agent's run (default 600 for HTTP, "
                                                    "1800 for the CLIs)."),
):
    """Propose -> run -> decide, forever or until a limit. Ctrl-C safe; run it again to resume.

    Exit status: 0 a limit was reached or Ctrl-C; 1 the workspace is not ready; 2 the agent cannot work
    (before the first proposal, or a configuration error such as an unknown model or a rejected key) or the
    task needs a variable that is not set (its grader's endpoint); 3 --max-failures proposals failed in a row."""
    from .agents import AgentUnavailable
    from .loop import Limits, LoopFailed, Policy, run_loop

    try:
        done = run_loop(_workspace_root(), agent, Limits(max_experiments, max_hours), model=model,
                        base_url=base_url, rule=_rule(rule), sandbox_mode=sandbox, noise_runs=noise_runs,
                        noise_every=noise_every, policy=Policy(max_failures=max_failures, backoff=backoff),
                        request_timeout=request_timeout)
    except AgentUnavailable as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False)
        raise typer.Exit(2)
    except LoopFailed as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False)
        err.print(f"loop: {e.done} experiment(s) this session; `autoresearch status` for the ledger, "
                  f"runs/proposals/ for what the agent answered", highlight=False)
        raise typer.Exit(e.code)
    err.print(f"loop: {done} experiment(s) this session; `autoresearch status` for the ledger", highlight=False)


@app.command()
@clean_errors
def swarm(
    workers: Optional[int] = typer.Option(None, "--workers", "-w", min=1, help="Workers on this machine (default: "
                                          "one per GPU, else one); with --ray, workers on the cluster."),
    ray_address: Optional[str] = typer.Option(None, "--ray", help="Run the workers on a running Ray cluster: its "
                                              "address (host:port), or `auto` for the one this machine joined."),
    agent: str = _agent_option(),
    max_experiments: Optional[int] = _max_experiments_option(),
    max_hours: Optional[float] = _max_hours_option(),
    model: Optional[str] = _model_option(),
    base_url: Optional[str] = _base_url_option(),
    rule: str = _rule_option(),
    sandbox: Optional[str] = _sandbox_option(),
    noise_runs: int = typer.Option(4, help=NOISE_RUNS_HELP),
    verify: bool = typer.Option(False, "--verify", help="A win is run again by a second worker of the same "
                                "platform before it is kept and others build on it."),
    threads: Optional[int] = typer.Option(None, min=1, help="Torch threads per worker on CPU (default: the cores "
                                          "split evenly between the workers)."),
    max_failures: int = typer.Option(10, min=1, help="A worker stops after this many failed proposals in a row."),
    backoff: float = typer.Option(10.0, min=0.0, help="Seconds before a worker retries a failed proposal; doubled "
                                  "after each failure in a row, up to 300."),
    request_timeout: Optional[float] = typer.Option(None, min=1.0, help="Seconds one proposal may take."),
):
    """Many workers, one frontier: N workers (Ray actors) propose and train in folders of their own; this
    process is the hub that claims, records and decides. Ctrl-C stops them all; run it again to resume.

    Exit status: 0 a limit was reached or Ctrl-C; 1 the workspace is not ready or no worker could start;
    2 the agent's requests are refused; 3 every worker stopped."""
    from .loop import Limits
    from .swarm.driver import Options, run_swarm
    from .swarm.hub import SwarmFailed

    opts = Options(workers=workers, agent=agent, model=model, base_url=base_url, rule=_rule(rule), sandbox=sandbox,
                   noise_runs=noise_runs, verify=verify, ray=ray_address, max_failures=max_failures,
                   backoff=backoff, request_timeout=request_timeout, threads=threads)

    def say(line: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)

    try:
        done, _ = run_swarm(_workspace_root(), opts, Limits(max_experiments, max_hours), say=say)
    except SwarmFailed as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False)
        raise typer.Exit(e.code)
    err.print(f"swarm: {done} experiment(s) this session; `autoresearch status` for the ledger", highlight=False)


@app.command()
@clean_errors
def recover():
    """Bring the workspace back to a consistent state after an interrupted run."""
    from .ledger import Ledger
    from .recovery import WorkspaceLock, recover as do_recover

    root = _workspace_root()
    with WorkspaceLock(root):
        messages = do_recover(root, Ledger(root))
    for line in messages or ["nothing to recover: the workspace is consistent"]:
        err.print(line, highlight=False)


@app.command()
@clean_errors
def status(
    last: int = typer.Option(15, "--last", "-n", help="How many recent experiments to list."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary and every row as JSON instead."),
):
    """The ledger at a glance: counts, best val_bpb, frontier, recent experiments."""
    from .history import reading, status_json, to_json
    from .status import print_status

    with reading(_workspace_root()) as h:
        if as_json:
            print(to_json(status_json(h)))
        else:
            print_status(h, last)


@app.command()
@clean_errors
def report(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for progress.png and report.html "
                                       "(default: the workspace's report/)."),
    mlflow: Optional[bool] = typer.Option(None, "--mlflow/--no-mlflow", help="Also log each experiment as one "
                                          "MLflow run, once (default: on when $AUTORESEARCH_MLFLOW_URI is set)."),
    mlflow_uri: Optional[str] = typer.Option(None, "--mlflow-uri", help="MLflow tracking URI (else "
                                             "$AUTORESEARCH_MLFLOW_URI, else sqlite in .autoresearch/mlflow/)."),
):
    """What happened overnight: progress.png and a self-contained report.html (optionally MLflow runs)."""
    import os

    from .history import reading
    from .mlflow_export import MLFLOW_ENV, MlflowUnavailable, log_mlflow
    from .report import write_report

    with reading(_workspace_root()) as h:
        written = write_report(h, out)
        print(f"wrote {written['png']}\nwrote {written['html']}  ({written['progress'].title})")
        if mlflow is None:
            mlflow = bool(mlflow_uri or os.environ.get(MLFLOW_ENV))
        if mlflow:
            try:
                done = log_mlflow(h, mlflow_uri)
            except MlflowUnavailable as e:
                err.print(f"[bold red]error:[/] {e}", highlight=False)
                raise typer.Exit(2)
            print(f"mlflow: {len(done['added'])} run(s) added, {len(done['skipped'])} already logged "
                  f"(experiment {done['experiment']!r} at {done['uri']})")


@app.command()
@clean_errors
def show(
    ref: str = typer.Argument(..., help="Ledger id or commit (a prefix is enough)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
    tail: int = typer.Option(20, "--tail", help="How many lines of the log to show."),
):
    """One experiment: metrics, status, decision, the diff of train.py against its parent, the log tail."""
    from .history import format_show, reading, show as show_experiment, to_json

    with reading(_workspace_root()) as h:
        info = show_experiment(h, ref, tail)
    print(to_json(info) if as_json else format_show(info))


@app.command()
@clean_errors
def lineage(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text.")):
    """The kept commits of this branch, baseline to frontier, with val_bpb and deltas: the research notebook."""
    from .history import format_lineage, lineage as kept_chain, reading, to_json

    with reading(_workspace_root()) as h:
        data = kept_chain(h)
    print(to_json(data) if as_json else format_lineage(data))


@app.command()
def profiles():
    """List the profiles and their frozen constants."""
    from rich.table import Table

    from .harness.profiles import PROFILES

    table = Table("profile", "dataset", "seq", "vocab", "budget", "eval tokens", "for")
    for p in PROFILES.values():
        table.add_row(p.name, p.dataset, str(p.max_seq_len), str(p.vocab_size), f"{p.time_budget:g}s",
                      f"{p.eval_tokens:,}", p.description.split(":")[0])
    Console().print(table)


@app.command("tasks")
def tasks_command():
    """List the built-in tasks (`autoresearch init DIR --task NAME`; a folder with a task.toml works too)."""
    from rich.table import Table

    from . import task as tasks

    import os

    found = {name: tasks.GPT_TASK if folder is None else tasks.load(folder) for name, folder in tasks.builtin().items()}
    table = Table("task", "editable", "metric", "direction", "budget", "needs")
    for name, t in found.items():
        budget = "the profile's" if t.is_gpt else f"{t.budget:g}s"
        table.add_row(name, ", ".join(t.editable), t.metric, t.direction, budget, ", ".join(t.requires_env) or "-")
    Console().print(table)
    for name, t in found.items():
        print(f"{name}: {t.description}")
        if missing := [v for v in t.requires_env if not os.environ.get(v)]:
            print(f"  not set here: {', '.join(missing)}: {t.requires_help}")


@app.command()
def version():
    """Print the harness version."""
    from . import __version__

    print(__version__)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
