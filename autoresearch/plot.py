"""progress.png: the ledger as the original autoresearch analysis drew it (matplotlib, no display needed).

x is the experiment number (among the runs that produced a val_bpb), y is val_bpb; discarded runs are grey
dots, kept runs green dots labelled with their description, a step line is the running best, and the y-axis
spans best -> baseline, so the kept range stays readable; a discarded run worse than the whole axis is a grey
triangle on its top edge with its value written under it (work that happened is never off the chart). Crashes, timeouts and rejections have no val_bpb: they are counted in the title
only. With several branches in the ledger every branch gets its own colour (kept markers and best line),
and its own numbering from 0.

    plot_progress(rows, path)   draws the figure (16x8 in at 100 dpi) and returns what was drawn
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from .history import FAILED, label, measured
from .ledger import Experiment

FIG_INCHES = (16, 8)
FIG_DPI = 100
DISCARD_COLOR = "#bbbbbb"
ABOVE_COLOR = "#888888"
BRANCH_COLORS = ("#2ecc71", "#3498db", "#e67e22", "#9b59b6", "#e74c3c", "#16a085", "#d4ac0d", "#34495e")
BEST_COLOR_SINGLE = "#27ae60"
WORKER_COLORS = ("#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")


def swarm_groups(rows: list[Experiment]) -> tuple[str, dict[int, str]]:
    """For a swarm's rows: what points are coloured by ("worker", or "platform" when results came from
    several) and each row's group; ("", {}) for single-machine rows."""
    if not any(r.worker for r in rows):
        return "", {}
    by = "platform" if len({r.platform for r in rows if r.platform}) > 1 else "worker"
    return by, {r.id: (getattr(r, by) or "-").split(" |")[0] for r in rows}


@dataclass
class Series:
    """One branch as plotted: points are (x, val_bpb, ledger id); best is the step line's vertices."""

    branch: str
    color: str
    kept: list[tuple[int, float, int]] = field(default_factory=list)
    discarded: list[tuple[int, float, int]] = field(default_factory=list)
    best: list[tuple[int, float]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    baseline: float | None = None

    def above(self, ylim: tuple[float, float] | None) -> list[tuple[int, float, int]]:
        """The discarded points worse than the top of the axis: drawn on its edge."""
        return [p for p in self.discarded if ylim is not None and p[1] > ylim[1]]


@dataclass
class Progress:
    path: Path
    title: str
    experiments: int           # finished experiments, all statuses (running ones are not counted)
    kept: int
    failed: int                # crash + timeout
    rejected: int
    series: list[Series]
    ylim: tuple[float, float] | None
    size_px: tuple[int, int]
    legend: list[str] = field(default_factory=list)
    above: int = 0             # discarded points drawn on the top edge (worse than the axis shows)


def progress_series(rows: list[Experiment], direction: str = "minimize") -> list[Series]:
    """Per branch (in order of first appearance): kept and discarded points and the running best."""
    out = []
    for i, (branch, valid) in enumerate(measured(rows).items()):
        s = Series(branch=branch, color=BRANCH_COLORS[i % len(BRANCH_COLORS)])
        best = None
        for x, r in enumerate(valid):
            if r.status == "keep":
                s.kept.append((x, r.val_bpb, r.id))
                s.labels.append(label(r.description))
                if s.baseline is None:
                    s.baseline = r.val_bpb
                best = r.val_bpb if best is None else (min if direction == "minimize" else max)(best, r.val_bpb)
                if not s.best or s.best[-1][1] != best:
                    s.best.append((x, best))
            else:
                s.discarded.append((x, r.val_bpb, r.id))
        if s.best and valid and len(valid) - 1 > s.best[-1][0]:
            s.best.append((len(valid) - 1, s.best[-1][1]))  # the running best holds to the last experiment
        out.append(s)
    return out


def _ylim(series: list[Series]) -> tuple[float, float] | None:
    baselines = [s.baseline for s in series if s.baseline is not None]
    bests = [y for s in series for _, y, _ in s.kept]
    if not bests:  # no keep yet: span whatever was measured
        bests = baselines = [y for s in series for _, y, _ in s.discarded]
    if not bests:
        return None
    better = [y for s in series for _, y, _ in s.discarded if y < min(bests)]   # e.g. inside the noise band
    top, bottom = max(baselines), min(bests + better)
    margin = (top - bottom) * 0.15
    if margin <= 0:
        margin = max(abs(bottom) * 0.01, 1e-3)
    return bottom - margin, top + margin


def _png_size(data: bytes) -> tuple[int, int]:
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def plot_progress(rows: list[Experiment], path: Path, metric: str = "val_bpb", direction: str = "minimize") -> Progress:
    """Draw progress.png (16x8 in at 100 dpi) and return what was drawn. A metric to maximize is drawn with
    matplotlib's own limits (the clipping of far-off discards is drawn for lower-is-better metrics)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # ~0.4 s to import: only when drawing
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    finished = [r for r in rows if r.status != "running"]
    kept = sum(r.status == "keep" for r in finished)
    failed = sum(r.status in FAILED for r in finished)
    rejected = sum(r.status == "rejected" for r in finished)
    title = f"autoresearch progress: {len(finished)} experiments, {kept} kept"
    if failed:
        title += f", {failed} crashed or timed out"
    if rejected:
        title += f", {rejected} rejected"
    series = progress_series(finished, direction)
    single = len(series) <= 1
    by, group = swarm_groups(finished)
    palette = {g: WORKER_COLORS[i % len(WORKER_COLORS)] for i, g in enumerate(sorted(set(group.values())))}
    ylim = _ylim(series)
    if ylim is not None and direction != "minimize":
        ylim, autoscale = None, True
    else:
        autoscale = False

    fig = Figure(figsize=FIG_INCHES, dpi=FIG_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    discard_labelled = False
    for s in series:
        name = "" if single else f"{s.branch or '(no branch)'}: "
        best_color = BEST_COLOR_SINGLE if single else s.color
        above = s.above(ylim)
        inside = [p for p in s.discarded if p not in above]
        if inside and by:   # a swarm: each worker's (or platform's) discarded runs in its colour
            for g, color in palette.items():
                mine = [p for p in inside if group.get(p[2]) == g]
                if mine:
                    ax.scatter([p[0] for p in mine], [p[1] for p in mine], c=color, s=14, alpha=0.6, zorder=2,
                               label=None if discard_labelled else f"discarded, {by} {g}")
            discard_labelled = discard_labelled or not single
        elif inside:
            ax.scatter([p[0] for p in inside], [p[1] for p in inside], c=DISCARD_COLOR, s=14,
                       alpha=0.7, zorder=2, label=None if discard_labelled else "discarded")
            discard_labelled = True
        if above:
            edge = ylim[1] - 0.015 * (ylim[1] - ylim[0])
            ax.scatter([p[0] for p in above], [edge] * len(above), c=ABOVE_COLOR, s=30, marker="^", zorder=2,
                       label="discarded, above the axis (value below)")
            for x, y, _ in above:
                ax.annotate(f"{y:.3f}", (x, edge), textcoords="offset points", xytext=(0, -6), fontsize=7,
                            color=ABOVE_COLOR, rotation=90, ha="center", va="top").set_in_layout(False)
        if s.kept:
            edges = [palette[group[p[2]]] for p in s.kept] if by else "black"
            ax.scatter([p[0] for p in s.kept], [p[1] for p in s.kept], c=s.color, s=50, zorder=4,
                       edgecolors=edges, linewidths=1.8 if by else 0.5,
                       label=f"{name}kept" + (f" (edge: its {by})" if by else ""))
            for (x, y, _), text in zip(s.kept, s.labels):
                high = ylim is not None and (y - ylim[0]) > 0.8 * (ylim[1] - ylim[0])  # no room above: go below
                note = ax.annotate(text, (x, y), textcoords="offset points", xytext=(6, -6 if high else 6),
                                   fontsize=8, color="#1a5e35" if single else s.color, rotation=-30 if high else 30,
                                   ha="left", va="top" if high else "bottom", annotation_clip=True, clip_on=True)
                note.set_in_layout(False)
        if s.best:
            ax.step([p[0] for p in s.best], [p[1] for p in s.best], where="post", color=best_color,
                    linewidth=2, alpha=0.7, zorder=3, label=f"{name}running best")
    if ylim is not None:
        ax.set_ylim(*ylim)
        last = max(p[0] for s in series for p in s.kept + s.discarded)
        ax.set_xlim(-0.5, last + max(1.0, 0.2 * (last + 1)))  # room for the last labels
    elif not autoscale:
        ax.text(0.5, 0.5, f"no experiment with a {metric} yet", transform=ax.transAxes, ha="center",
                va="center", fontsize=14, color="#777777")
    ax.set_xlabel("Experiment #", fontsize=12)
    label = "Validation BPB" if metric == "val_bpb" else metric
    ax.set_ylabel(f"{label} ({'lower' if direction == 'minimize' else 'higher'} is better)", fontsize=12)
    ax.set_title(title, fontsize=14)
    ax.grid(True, alpha=0.2)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    legend = ax.get_legend_handles_labels()[1]
    if legend:
        ax.legend(loc="upper right", fontsize=9)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.08, top=0.93)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=FIG_DPI, format="png")
    return Progress(path=path, title=title, experiments=len(finished), kept=kept, failed=failed,
                    rejected=rejected, series=series, ylim=ylim, size_px=_png_size(path.read_bytes()),
                    legend=legend, above=sum(len(s.above(ylim)) for s in series))
