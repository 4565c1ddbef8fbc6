"""`autoresearch status`: the ledger as a table (rich on a terminal, plain aligned text otherwise).

The table fits the terminal's width (or $COLUMNS when the output is not a terminal): a long description is
cut with an ellipsis (`autoresearch show ID` has the whole). Piped with no $COLUMNS, nothing is cut.
"""

from __future__ import annotations

import os
import sys

from rich import box
from rich.console import Console
from rich.table import Table

from .history import History, delta_of, fmt, glance, spending, spending_line

COLUMNS = ("id", "commit", "status", "val_bpb", "delta", "test_bpb", "mem GB", "train s", "class", "description")
RIGHT = {"id", "val_bpb", "delta", "test_bpb", "mem GB", "train s"}
STATUS_STYLE = {"keep": "green", "discard": "bright_black", "crash": "red", "timeout": "yellow",
                "rejected": "magenta", "running": "cyan", "invalid": "bold red", "stale": "yellow"}


def print_status(h: History, last: int = 15) -> None:
    s = glance(h)
    tty = sys.stdout.isatty()
    console = Console(soft_wrap=True, no_color=not tty, width=None if tty else _columns())
    frontier = s["frontier"]
    metric, hidden = s["metric"], s["hidden_metric"]
    best = f"{s['best_val_bpb']:.6f}" if s["best_val_bpb"] is not None else "-"
    test = f", {hidden} {frontier.test_bpb:.6f}" if frontier and frontier.test_bpb is not None else ""
    what = "" if h.task.is_gpt else f"task {h.task.name}, {metric} ({s['direction']}); "
    console.print(f"branch {s['branch']}: {what}{s['experiments']} experiments, {s['kept']} kept, best {metric} {best}, "
                  f"frontier {frontier.short if frontier else '-'}{test}", highlight=False)
    if spent := spending_line(spending(h)):
        console.print(spent, highlight=False)
    if s["noise_std"] is not None:
        console.print(f"noise floor: std {s['noise_std']:.6f} of one run ({s['noise_dof']} dof)", highlight=False)
    if s["overfit"]:
        line = s["lineage"]
        console.print(f"[bold yellow]warning:[/] {metric} improved ({line['baseline_bpb']:.6f} -> "
                      f"{line['frontier_bpb']:.6f}) while {hidden} got worse ({line['baseline_test_bpb']:.6f} -> "
                      f"{line['frontier_test_bpb']:.6f}): the branch may be fitting the validation set",
                      highlight=False)
    table = Table(box=box.SIMPLE_HEAD if sys.stdout.isatty() else None, pad_edge=False)
    shown = s["rows"][-last:]
    swarm = any(r.worker for r in shown)   # a swarm's rows say which worker ran them
    columns = COLUMNS[:-1] + ("worker",) + COLUMNS[-1:] if swarm else COLUMNS
    if not h.task.is_gpt:  # the task's names for the ledger's val_bpb and test_bpb columns
        columns = tuple({"val_bpb": metric, "test_bpb": hidden}.get(c, c) for c in columns)
    rows = []
    for r in shown:
        rows.append((str(r.id), r.short or "-", r.status, fmt(r.val_bpb), fmt(delta_of(r), "+.6f", none=""),
                     fmt(r.test_bpb), fmt(r.memory_gb, ".2f"), fmt(r.training_seconds, ".1f"), r.error_class or "",
                     *((r.worker or "-",) if swarm else ()), r.description))
    if swarm and (platforms := sorted({r.platform for r in shown if r.platform})):
        console.print("platforms: " + "; ".join(platforms), highlight=False)
    others = sum(max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(columns[:-1]))
    gaps = 3 * len(columns) + 2 if tty else 2 * (len(columns) - 1)   # padding (and the box on a terminal)
    room = max(12, console.width - others - gaps)   # what is left for the description
    for col in columns:
        table.add_column(col, justify="right" if col in RIGHT or col in (metric, hidden) else "left", no_wrap=True,
                         overflow="ellipsis", max_width=room if col == "description" else None)
    for row in rows:
        style = STATUS_STYLE.get(row[2], "")
        table.add_row(*row[:2], f"[{style}]{row[2]}[/]" if style else row[2], *row[3:])
    console.print(table, soft_wrap=False)   # one line per row: the description is cut, not wrapped


def _columns() -> int:
    """The width for output that is not a terminal: $COLUMNS when set, else wide enough for anything."""
    try:
        return max(40, int(os.environ.get("COLUMNS", "")))
    except ValueError:
        return 4096
