"""The history of a workspace as data: what `status`, `show`, `lineage` and the report are drawn from.

    autoresearch status --json      glance() and every row                  (the table: status.py)
    autoresearch show ID|COMMIT     show(): one row, its diff against its parent, its log tail
    autoresearch lineage            lineage(): the kept commits of the branch, baseline -> frontier
    autoresearch report             summary(): counts, rates, time, baseline -> best per branch (report.py)
    status / show / report          spending(): what the agents were asked and what it cost, failures included

A read command opens the ledger once, read-only, for its whole run (`with reading(root) as h:`) and hands
that value down: the rows, the ledger and the branch, looked up once. Everything here only reads the ledger
and git; nothing is written.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from . import task as tasks
from .git import GitError, current_branch, git
from .layout import CANDIDATE
from .ledger import Attempt, Experiment, Ledger
from .selection import pooled_noise
from .logs import log_tail

VALID = ("keep", "discard", "stale")   # statuses that carry a val_bpb (stale: measured on an old parent)
FAILED = ("crash", "timeout", "invalid")
LABEL_CHARS = 45
REPLY_LINES = 40                     # of the agent's reply, in `show`
REPORTED = f"reported by {CANDIDATE}"  # figures only the candidate can know: recorded as printed, never checked


class HistoryError(ValueError):
    pass


@dataclass
class History:
    """One read command's view of the workspace: the ledger (open, read-only), its rows, the current branch."""

    root: Path
    ledger: Ledger
    branch: str
    rows: list[Experiment]
    task: tasks.Task = tasks.GPT_TASK   # what the workspace researches: the metric's name and direction

    @property
    def metric(self) -> str:
        return self.task.metric

    def best(self, values: list[float]) -> float:
        """The best of `values` in the metric's direction."""
        return min(values) if self.task.direction == "minimize" else max(values)


def _task_of(root: Path) -> tasks.Task:
    """The workspace's task for labels and directions; a broken task.toml still lets the history be read."""
    try:
        return tasks.of(root)
    except tasks.TaskError:
        return tasks.GPT_TASK


@contextmanager
def reading(root: Path) -> Iterator[History]:
    """Open the ledger read-only and look the branch up, once; the ledger is closed when the block ends."""
    root = Path(root).resolve()
    ledger = Ledger(root, readonly=True)
    try:
        yield History(root=root, ledger=ledger, branch=current_branch(root) or "", rows=ledger.all(),
                      task=_task_of(root))
    finally:
        ledger.close()


# -- rows ----------------------------------------------------------------------------------------


def delta_of(exp: Experiment) -> float | None:
    """val_bpb against the frontier it was compared with (negative: better)."""
    if exp.val_bpb is None or exp.frontier_bpb is None:
        return None
    return exp.val_bpb - exp.frontier_bpb


def row_dict(exp: Experiment) -> dict:
    d = asdict(exp)
    d["short"] = exp.short
    d["delta"] = delta_of(exp)
    return d


def label(description: str) -> str:
    """A description on one line, cut to LABEL_CHARS: a plot label, an MLflow run name."""
    text = " ".join(description.split())
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 3] + "..."


def measured(rows: list[Experiment]) -> dict[str, list[Experiment]]:
    """Per branch, in order of first appearance: its rows that carry a val_bpb, in ledger order."""
    out: dict[str, list[Experiment]] = {}
    for r in rows:
        out.setdefault(r.branch, [])
        if r.status in VALID and r.val_bpb is not None:
            out[r.branch].append(r)
    return out


def fmt(value, spec: str = ".6f", none: str = "-") -> str:
    return none if value is None else format(value, spec)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 90:
        return f"{minutes:.0f} min"
    return f"{int(minutes // 60)} h {int(minutes % 60):02d} min"


def to_json(data) -> str:
    return json.dumps(data, indent=2, default=str)


def _git_or_none(root: Path, *args: str) -> str | None:
    try:
        return git(root, *args)
    except (GitError, OSError):
        return None


def train_diff(root: Path, exp: Experiment) -> str | None:
    """`git diff parent commit` of the candidate file; None when either side is missing or unreachable."""
    if not exp.parent or not exp.commit:
        return None
    return _git_or_none(root, "diff", exp.parent, exp.commit, "--", CANDIDATE)


def log_file(root: Path, exp: Experiment) -> Path | None:
    """The experiment's log, if it is still there (the ledger keeps it relative to the workspace)."""
    if not exp.log_path:
        return None
    path = Path(root) / exp.log_path
    return path if path.exists() else None


# -- the summary ---------------------------------------------------------------------------------


def summary(rows: list[Experiment], direction: str = "minimize") -> dict:
    """Counts, rates and time over the finished rows; baseline -> best per branch."""
    finished = [r for r in rows if r.status != "running"]
    ran = [r for r in finished if r.status != "rejected"]
    kept = [r for r in ran if r.status == "keep"]
    failures: dict[str, int] = {}
    for r in ran:
        if r.status in FAILED:
            key = f"{r.status}/{r.error_class or 'unknown'}"
            failures[key] = failures.get(key, 0) + 1
    starts = [r.started_at for r in finished if r.started_at]
    ends = [r.finished_at for r in finished if r.finished_at]
    span = (max(ends) - min(starts)) if starts and ends else None
    spent = sum(r.finished_at - r.started_at for r in finished if r.finished_at and r.started_at)
    branches = []
    for branch, valid in measured(finished).items():
        kept_bpb = [r.val_bpb for r in valid if r.status == "keep"]
        pick, sign = (min, 1.0) if direction == "minimize" else (max, -1.0)
        base, best = (kept_bpb[0], pick(kept_bpb)) if kept_bpb else (None, None)
        improvement = sign * (base - best) if base is not None and best is not None else None
        branches.append({"branch": branch, "baseline_bpb": base, "best_bpb": best, "improvement": improvement,
                         "improvement_pct": 100 * improvement / base if improvement is not None and base else None,
                         "experiments": sum(r.branch == branch for r in finished),
                         "kept": len(kept_bpb)})
    return {
        "experiments": len(finished),
        "running": len(rows) - len(finished),
        "ran": len(ran),
        "kept": len(kept),
        "discarded": sum(r.status == "discard" for r in ran),
        "crashed": sum(r.status == "crash" for r in ran),
        "timed_out": sum(r.status == "timeout" for r in ran),
        "invalid": sum(r.status == "invalid" for r in ran),
        "rejected": len(finished) - len(ran),
        "keep_rate": len(kept) / len(ran) if ran else None,
        "crash_rate": sum(failures.values()) / len(ran) if ran else None,
        "crash_rate_by_class": {k: v / len(ran) for k, v in sorted(failures.items())},
        "failures_by_class": dict(sorted(failures.items())),
        "span_seconds": span,
        "time_spent_seconds": spent,
        "experiments_per_hour": len(ran) / (span / 3600) if span else None,
        "branches": branches,
    }


# -- what the agents cost ------------------------------------------------------------------------


def cost_text(cost: float | None, estimated) -> str:
    """A cost as it may be read: `$0.0123`, `~$0.0123 (estimate)`, or `unknown`."""
    if cost is None:
        return "unknown"
    return f"~${cost:.4f} (estimate)" if estimated else f"${cost:.4f}"


def _attempts_of(h: History) -> list[Attempt]:
    """Every proposal attempt; for a ledger older than the proposals table, its agents' experiment rows."""
    found = h.ledger.attempts()
    if found:
        return found
    return [Attempt(branch=r.branch, experiment_id=r.id, agent=r.agent, model=r.model, input_tokens=r.input_tokens,
                    output_tokens=r.output_tokens, cost_usd=r.cost_usd, cost_estimated=r.cost_estimated,
                    seconds=r.proposal_seconds, outcome="proposed", description=r.description,
                    started_at=r.started_at)
            for r in h.rows if r.agent and r.description != "baseline" and (r.model or r.input_tokens is not None)]


def spending(h: History) -> dict:
    """Proposals asked for (failed ones too), tokens and cost, per agent and model and in all; the cost over
    time; the cost per kept improvement. A cost is summed only where known (`cost_unknown` counts the rest)."""
    attempts = _attempts_of(h)
    groups: dict[tuple[str, str], dict] = {}
    cumulative, total = [], None
    for a in attempts:
        g = groups.setdefault((a.agent, a.model), {"agent": a.agent, "model": a.model, "proposals": 0, "failed": 0,
                                                   "input_tokens": 0, "output_tokens": 0, "cost_usd": None,
                                                   "cost_estimated": False, "cost_unknown": 0, "seconds": 0.0})
        g["proposals"] += 1
        g["failed"] += a.outcome != "proposed"
        g["input_tokens"] += a.input_tokens or 0
        g["output_tokens"] += a.output_tokens or 0
        g["seconds"] += a.seconds or 0.0
        if a.cost_usd is None:
            g["cost_unknown"] += 1
        else:
            g["cost_usd"] = (g["cost_usd"] or 0.0) + a.cost_usd
            g["cost_estimated"] |= bool(a.cost_estimated)
            total = (total or 0.0) + a.cost_usd
        cumulative.append({"at": a.started_at, "attempt": a.id, "experiment_id": a.experiment_id, "agent": a.agent,
                           "model": a.model, "outcome": a.outcome, "cost_usd": a.cost_usd, "cumulative_usd": total,
                           "input_tokens": a.input_tokens, "output_tokens": a.output_tokens, "error": a.error,
                           "refused": a.refused})
    by_model = list(groups.values())
    proposed = {a.experiment_id for a in attempts if a.experiment_id is not None}
    kept = sum(r.status == "keep" and r.id in proposed and r.frontier_bpb is not None for r in h.rows)
    estimated = any(g["cost_estimated"] for g in by_model)
    return {"proposals": len(attempts), "failed": sum(g["failed"] for g in by_model),
            "input_tokens": sum(g["input_tokens"] for g in by_model),
            "output_tokens": sum(g["output_tokens"] for g in by_model),
            "cost_usd": total, "cost_estimated": estimated, "cost_unknown": sum(g["cost_unknown"] for g in by_model),
            "kept_improvements": kept, "cost_per_kept_usd": total / kept if total is not None and kept else None,
            "by_model": by_model, "over_time": cumulative}


def spending_line(sp: dict) -> str | None:
    """The one-line total `status` prints; None when no agent was ever asked."""
    if not sp["proposals"]:
        return None
    who = ", ".join(f"{g['agent']} ({g['model'] or 'model unknown'})" for g in sp["by_model"])
    unknown = f", {sp['cost_unknown']} with no known cost" if sp["cost_unknown"] and sp["cost_usd"] is not None else ""
    return (f"agents: {who}: {sp['proposals']} proposals ({sp['failed']} failed), {sp['input_tokens']:,} tokens in / "
            f"{sp['output_tokens']:,} out, cost {cost_text(sp['cost_usd'], sp['cost_estimated'])}{unknown}")


# -- status --------------------------------------------------------------------------------------


def glance(h: History) -> dict:
    """The branch at a glance: what `status` prints and `status --json` returns."""
    rows = h.rows
    kept = [r for r in rows if r.status == "keep"]
    valid = [r.val_bpb for r in rows if r.val_bpb is not None and r.status in VALID]
    line = lineage(h)
    return {"branch": h.branch, "rows": rows, "experiments": len(rows), "kept": len(kept),
            "best_val_bpb": h.best(valid) if valid else None, "frontier": h.ledger.frontier(h.branch),
            "metric": h.metric, "hidden_metric": h.task.hidden_metric, "direction": h.task.direction,
            "noise_std": line["noise_std"], "noise_dof": line["noise_dof"],
            "overfit": line["overfit"], "lineage": line}


def status_json(h: History) -> dict:
    """The status summary plus every row, JSON-ready."""
    s = glance(h)
    frontier = s["frontier"]
    return {"branch": s["branch"], "task": h.task.name, "metric": h.metric, "direction": h.task.direction,
            "experiments": s["experiments"], "kept": s["kept"],
            "best_val_bpb": s["best_val_bpb"], "frontier": frontier.commit if frontier else None,
            "frontier_id": frontier.id if frontier else None,
            "frontier_val_bpb": frontier.val_bpb if frontier else None,
            "frontier_test_bpb": frontier.test_bpb if frontier else None,
            "noise_std": s["noise_std"], "noise_dof": s["noise_dof"], "overfit": s["overfit"],
            "spending": spending(h), "rows": [row_dict(r) for r in s["rows"]]}


# -- show ----------------------------------------------------------------------------------------


def find_experiment(rows: list[Experiment], ref: str) -> Experiment:
    """A ledger id (digits) first, else a commit prefix; an ambiguous or unknown ref is an error."""
    ref = ref.strip()
    if not ref:
        raise HistoryError("give a ledger id or a commit")
    if ref.isdigit():
        for r in rows:
            if r.id == int(ref):
                return r
    matches = [r for r in rows if r.commit and r.commit.startswith(ref.lower())]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        ids = ", ".join(str(r.id) for r in matches)
        raise HistoryError(f"{ref!r} matches several experiments (ids {ids}): give more of the commit")
    raise HistoryError(f"no experiment with id or commit {ref!r} in the ledger")


def show(h: History, ref: str, tail: int = 20) -> dict:
    """One experiment by ledger id or commit (prefix): its row, delta, diff against its parent, log tail."""
    exp = find_experiment(h.rows, ref)
    info = row_dict(exp)
    info["parent_val_bpb"] = exp.frontier_bpb
    info["metric"], info["task"] = h.metric, h.task.name
    info["diff_of"] = CANDIDATE if h.task.is_gpt else ", ".join(h.task.editable)
    info["diff"] = (train_diff(h.root, exp) if h.task.is_gpt else
                    _git_or_none(h.root, "diff", exp.parent, exp.commit, "--", *h.task.editable_files(h.root))
                    if exp.commit and exp.parent else None)
    log = log_file(h.root, exp)
    info["log_tail"] = log_tail(log, tail, blank=True, chars=None) if log else None
    info["proposal"] = None
    for a in h.ledger.attempts():
        if a.experiment_id == exp.id:
            reply = h.root / a.reply_path if a.reply_path else None
            info["proposal"] = asdict(a) | {"reply": reply.read_text(errors="replace") if reply and reply.exists()
                                            else None}
    return info


def format_show(info: dict) -> str:
    delta = (f" ({info['delta']:+.6f} vs parent {info['parent_val_bpb']:.6f})" if info["delta"] is not None else "")
    out = [f"experiment {info['id']}  {info['status']}  commit {info['commit'] or '-'}",
           f"branch       {info['branch'] or '-'}",
           f"parent       {info['parent'] or '-'}",
           f"description  {info['description']}",
           f"{info.get('metric', 'val_bpb'):12s} {fmt(info['val_bpb'])}{delta}",
           f"memory_gb    {fmt(info['memory_gb'], '.3f')} (measured by the harness)"
           f"    training {fmt(info['training_seconds'], '.1f')} s    total {fmt(info['total_seconds'], '.1f')} s",
           f"{REPORTED}: steps {fmt(info['steps'], 'd')}    params {fmt(info['params_m'], '.2f')} M"
           f"    mfu {fmt(info['mfu_percent'], '.1f')} %",
           f"reason       {info['reason'] or '-'}"]
    if info["error_class"]:
        out.append(f"error        {info['error_class']}")
    if info["agent"]:
        tokens = (f"    tokens {info['input_tokens'] or 0:,} in / {info['output_tokens'] or 0:,} out"
                  if info["input_tokens"] is not None or info["output_tokens"] is not None else "")
        seconds = f"    proposal {info['proposal_seconds']:.1f} s" if info["proposal_seconds"] is not None else ""
        out.append(f"agent        {info['agent']}    model {info['model'] or '-'}{tokens}    "
                   f"cost {cost_text(info['cost_usd'], info['cost_estimated'])}{seconds}")
    if info.get("worker"):
        out.append(f"worker       {info['worker']} on {info['host'] or '?'}    platform {info['platform'] or '-'}")
    proposal = info.get("proposal")
    if proposal and proposal["refused"]:
        out.append(f"refused      {proposal['refused']}")
    if breakdown := wall_time(info):
        out.append(f"wall time    {breakdown}")
    if info["started_at"]:
        out.append("started      " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started_at"])))
    out.append("")
    if info["diff"] is None:
        out.append(f"--- diff of {info.get('diff_of', CANDIDATE)} against its parent: unavailable")
    else:
        out.append(f"--- diff of {info.get('diff_of', CANDIDATE)} against its parent" + ("" if info["diff"] else ": none"))
        if info["diff"]:
            out.append(info["diff"])
    if proposal and proposal["reply"] is not None:
        lines = proposal["reply"].rstrip().splitlines()
        more = f" (first {REPLY_LINES} of {len(lines)} lines)" if len(lines) > REPLY_LINES else ""
        out += ["", f"--- the agent's reply: its reasoning and edit ({proposal['reply_path']}){more}",
                *lines[:REPLY_LINES]]
    if info["log_tail"] is not None:
        out += ["", f"--- log tail ({info['log_path']})", info["log_tail"]]
    elif info["error_excerpt"]:
        out += ["", "--- error excerpt", info["error_excerpt"].rstrip()]
    return "\n".join(out)


def wall_time(info: dict) -> str | None:
    """Where an experiment's wall time went, from the ledger's timings (the last training run's, when a
    confirmation run was made): start-up, training and export inside train.py's process, the rest of that
    process, the evaluator, and everything else (harness, git, confirmation runs). None without timings."""
    total, train_wall = info.get("total_seconds"), info.get("train_wall_seconds")
    if total is None or train_wall is None:
        return None
    parts = [(name, info.get(key)) for name, key in (("start-up", "startup_seconds"), ("training", "training_seconds"),
                                                     ("export", "export_seconds"))]
    inside = sum(v for _, v in parts if v is not None)
    parts.append(("rest of train.py", max(0.0, train_wall - inside)))
    parts.append(("evaluation", info.get("eval_wall_seconds")))
    parts.append(("harness", max(0.0, total - train_wall - (info.get("eval_wall_seconds") or 0.0))))
    shown = " + ".join(f"{name} {v:.1f}" for name, v in parts if v is not None)
    return f"{total:.1f} s = {shown} s"


# -- lineage -------------------------------------------------------------------------------------


def lineage(h: History, branch: str | None = None) -> dict:
    """The kept commits of the branch (default: the current one), oldest first: the research notebook."""
    branch = branch or h.branch
    kept = {r.commit: r for r in h.rows if r.status == "keep" and r.branch == branch and r.commit}
    log = _git_or_none(h.root, "log", "--first-parent", "--reverse", "--format=%H%x1f%cI%x1f%s",
                       f"refs/heads/{branch}") if branch else None
    chain: list[tuple[Experiment, str]] = []
    if log is not None:
        for line in log.splitlines():
            commit, date, _subject = (line.split("\x1f") + ["", ""])[:3]
            if commit in kept:
                chain.append((kept[commit], date))
    else:  # no git history to follow: the ledger's order
        chain = [(r, "") for r in sorted(kept.values(), key=lambda r: r.id)]
    steps, sign = [], h.task.sign   # sign x value: lower is better, whatever the direction
    baseline = chain[0][0].val_bpb if chain else None
    previous = previous_test = None
    for exp, date in chain:
        delta = exp.val_bpb - previous if previous is not None and exp.val_bpb is not None else None
        total = exp.val_bpb - baseline if baseline is not None and exp.val_bpb is not None else None
        if not date and exp.finished_at:
            date = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(exp.finished_at))
        test_delta = (exp.test_bpb - previous_test if previous_test is not None and exp.test_bpb is not None
                      else None)
        steps.append({"id": exp.id, "commit": exp.commit, "short": exp.short, "date": date,
                      "description": exp.description, "val_bpb": exp.val_bpb, "delta": delta,
                      "delta_from_baseline": total, "test_bpb": exp.test_bpb, "test_delta": test_delta,
                      "samples": exp.samples, "reason": exp.reason,
                      "val_up_test_down": delta is not None and test_delta is not None
                                          and sign * delta < 0 < sign * test_delta})
        previous = exp.val_bpb if exp.val_bpb is not None else previous
        previous_test = exp.test_bpb if exp.test_bpb is not None else previous_test
    frontier = steps[-1] if steps else None
    improvement = (baseline - frontier["val_bpb"]) if frontier and baseline is not None else None
    tested = [st for st in steps if st["test_bpb"] is not None]
    base_test = tested[0]["test_bpb"] if tested else None
    front_test = tested[-1]["test_bpb"] if tested else None
    overfit = (len(tested) > 1 and sign * tested[-1]["val_bpb"] < sign * tested[0]["val_bpb"]
               and sign * front_test > sign * base_test)
    noise = pooled_noise(h.ledger.sample_groups(branch))
    return {"branch": branch, "metric": h.metric, "hidden_metric": h.task.hidden_metric,
            "direction": h.task.direction,
            "baseline_bpb": baseline, "frontier_bpb": frontier["val_bpb"] if frontier else None,
            "frontier": frontier["commit"] if frontier else None, "improvement": improvement,
            "improvement_pct": 100 * improvement / baseline if improvement is not None and baseline else None,
            "baseline_test_bpb": base_test, "frontier_test_bpb": front_test, "overfit": overfit,
            "flagged_steps": [st["id"] for st in steps if st["val_up_test_down"]],
            "noise_std": noise.std if noise else None, "noise_dof": noise.dof if noise else 0,
            "steps": steps}


def format_lineage(data: dict) -> str:
    if not data["steps"]:
        return f"branch {data['branch'] or '-'}: nothing kept yet"
    pct = f", {-data['improvement_pct']:+.2f} %" if data["improvement_pct"] is not None else ""
    metric, hidden = data.get("metric", "val_bpb"), data.get("hidden_metric", "test_bpb")
    out = [f"branch {data['branch']}: {len(data['steps'])} kept, {metric} {fmt(data['baseline_bpb'])} -> "
           f"{fmt(data['frontier_bpb'])} ({fmt(data['improvement'] and -data['improvement'], '+.6f')}{pct}); "
           f"{hidden} {fmt(data['baseline_test_bpb'])} -> {fmt(data['frontier_test_bpb'])}"]
    if data["noise_std"] is not None:
        out.append(f"noise floor: std {data['noise_std']:.6f} of one run ({data['noise_dof']} dof)")
    if data["overfit"]:
        out.append(f"WARNING: {metric} improved while {hidden} got worse: the branch may be fitting the validation set")
    out.append("")
    out.append(f"{'commit':7s}  {'date':16s}  {metric:8s}  {'delta':>9s}  {hidden:8s}  {'delta':>9s}")
    for st in data["steps"]:
        delta = "baseline " if st["delta"] is None else f"{st['delta']:+.6f}"
        tdelta = "" if st["test_delta"] is None else f"{st['test_delta']:+.6f}"
        flag = "  <- val better, test worse" if st["val_up_test_down"] else ""
        out.append(f"{st['short']}  {st['date'][:16].replace('T', ' '):16s}  {fmt(st['val_bpb'])}  {delta:>9s}  "
                   f"{fmt(st['test_bpb'])}  {tdelta:>9s}  #{st['id']}  {st['description']}{flag}")
    return "\n".join(out)
