"""`autoresearch status`: the ledger as a table (rich on a terminal, plain aligned text otherwise)."""

from __future__ import annotations

import sys

from rich import box
from rich.console import Console
from rich.table import Table

from .history import History, delta_of, fmt, glance, spending, spending_line

STATUS_STYLE = {"keep": "green", "discard": "bright_black", "crash": "red", "timeout": "yellow",
                "rejected": "magenta", "running": "cyan", "invalid": "bold red"}


def print_status(h: History, last: int = 15) -> None:
    s = glance(h)
    tty = sys.stdout.isatty()
    console = Console(soft_wrap=True, no_color=not tty, width=None if tty else 4096)
    frontier = s["frontier"]
    best = f"{s['best_val_bpb']:.6f}" if s["best_val_bpb"] is not None else "-"
    test = f", test_bpb {frontier.test_bpb:.6f}" if frontier and frontier.test_bpb is not None else ""
    console.print(f"branch {s['branch']}: {s['experiments']} experiments, {s['kept']} kept, best val_bpb {best}, "
                  f"frontier {frontier.short if frontier else '-'}{test}", highlight=False)
    if spent := spending_line(spending(h)):
        console.print(spent, highlight=False)
    if s["noise_std"] is not None:
        console.print(f"noise floor: std {s['noise_std']:.6f} of one run ({s['noise_dof']} dof)", highlight=False)
    if s["overfit"]:
        line = s["lineage"]
        console.print(f"[bold yellow]warning:[/] val_bpb improved ({line['baseline_bpb']:.6f} -> "
                      f"{line['frontier_bpb']:.6f}) while test_bpb got worse ({line['baseline_test_bpb']:.6f} -> "
                      f"{line['frontier_test_bpb']:.6f}): the branch may be fitting the validation set",
                      highlight=False)
    table = Table(box=box.SIMPLE_HEAD if sys.stdout.isatty() else None, pad_edge=False)
    for col in ("id", "commit", "status", "val_bpb", "delta", "test_bpb", "mem GB", "train s", "class", "description"):
        table.add_column(col, justify="right" if col in ("id", "val_bpb", "delta", "test_bpb", "mem GB", "train s")
                         else "left",
                         no_wrap=col == "description", overflow="ellipsis")
    for r in s["rows"][-last:]:
        delta = fmt(delta_of(r), "+.6f", none="")
        style = STATUS_STYLE.get(r.status, "")
        table.add_row(str(r.id), r.short or "-", f"[{style}]{r.status}[/]" if style else r.status,
                      fmt(r.val_bpb), delta, fmt(r.test_bpb), fmt(r.memory_gb, ".2f"),
                      fmt(r.training_seconds, ".1f"), r.error_class or "", r.description)
    console.print(table)
