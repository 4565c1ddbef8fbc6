"""What happened overnight: the ledger as a plot, a page, a notebook, and (optionally) MLflow runs.

    autoresearch report [--out DIR] [--mlflow]   progress.png + report.html (default DIR: report/)
    autoresearch show ID|COMMIT [--json]          one experiment: metrics, decision, diff, log tail
    autoresearch lineage [--json]                 the kept commits of this branch, baseline -> frontier
    autoresearch status --json                    the summary and every row, as JSON

`progress.png` follows the original autoresearch analysis: x is the experiment number (among the runs that
produced a val_bpb), y is val_bpb; discarded runs are grey dots, kept runs green dots labelled with their
description, a step line is the running best, and the y-axis spans best -> baseline. Crashes, timeouts and
rejections have no val_bpb: they are counted in the title only. With several branches in the ledger every
branch gets its own colour (kept markers and best line), and its own numbering from 0.

`report.html` is one self-contained file (inline CSS and JS, the plot as a data URI): it opens without
network. Everything here only reads the ledger and git; nothing is committed.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import struct
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .git import GitError, current_branch, git
from .layout import STATE as STATE_DIR
from .ledger import Experiment, Ledger

REPORT_DIR = "report"
PNG_NAME = "progress.png"
HTML_NAME = "report.html"
FIG_INCHES = (16, 8)
FIG_DPI = 100
LABEL_CHARS = 45
VALID = ("keep", "discard")          # statuses that carry a val_bpb
FAILED = ("crash", "timeout", "invalid")
DISCARD_COLOR = "#bbbbbb"
BRANCH_COLORS = ("#2ecc71", "#3498db", "#e67e22", "#9b59b6", "#e74c3c", "#16a085", "#d4ac0d", "#34495e")
BEST_COLOR_SINGLE = "#27ae60"
MLFLOW_ENV = "AUTORESEARCH_MLFLOW_URI"
MLFLOW_ID_TAG = "autoresearch.ledger_id"
MLFLOW_WORKSPACE_TAG = "autoresearch.workspace"
MLFLOW_DONE_TAG = "autoresearch.complete"


class ReportError(ValueError):
    pass


class MlflowUnavailable(ReportError):
    pass


def _rows(root: Path) -> list[Experiment]:
    ledger = Ledger(root, readonly=True)
    try:
        return ledger.all()
    finally:
        ledger.close()


def _delta(exp: Experiment) -> float | None:
    if exp.val_bpb is None or exp.frontier_bpb is None:
        return None
    return exp.val_bpb - exp.frontier_bpb


def _row_dict(exp: Experiment) -> dict:
    d = asdict(exp)
    d["short"] = exp.short
    d["delta"] = _delta(exp)
    return d


def _git_or_none(root: Path, *args: str) -> str | None:
    try:
        return git(root, *args)
    except (GitError, OSError):
        return None


def train_diff(root: Path, exp: Experiment) -> str | None:
    """`git diff parent commit -- train.py`; None when either side is missing or unreachable."""
    if not exp.parent or not exp.commit:
        return None
    return _git_or_none(root, "diff", exp.parent, exp.commit, "--", "train.py")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 90:
        return f"{minutes:.0f} min"
    return f"{int(minutes // 60)} h {int(minutes % 60):02d} min"


def _fmt(value, spec: str = ".6f", none: str = "-") -> str:
    return none if value is None else format(value, spec)


# -- the plot ------------------------------------------------------------------------------------


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


def _label(description: str) -> str:
    text = " ".join(description.split())
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 3] + "..."


def progress_series(rows: list[Experiment]) -> list[Series]:
    """Per branch (in order of first appearance): kept and discarded points and the running best."""
    branches: list[str] = []
    for r in rows:
        if r.branch not in branches:
            branches.append(r.branch)
    out = []
    for i, branch in enumerate(branches):
        s = Series(branch=branch, color=BRANCH_COLORS[i % len(BRANCH_COLORS)])
        valid = [r for r in rows if r.branch == branch and r.status in VALID and r.val_bpb is not None]
        best = None
        for x, r in enumerate(valid):
            if r.status == "keep":
                s.kept.append((x, r.val_bpb, r.id))
                s.labels.append(_label(r.description))
                if s.baseline is None:
                    s.baseline = r.val_bpb
                best = r.val_bpb if best is None else min(best, r.val_bpb)
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
    top, bottom = max(baselines), min(bests)
    margin = (top - bottom) * 0.15
    if margin <= 0:
        margin = max(abs(bottom) * 0.01, 1e-3)
    return bottom - margin, top + margin


def _png_size(data: bytes) -> tuple[int, int]:
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ReportError("not a PNG file")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def plot_progress(rows: list[Experiment], path: Path) -> Progress:
    """Draw progress.png (16x8 in at 100 dpi) and return what was drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
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
    series = progress_series(finished)
    single = len(series) <= 1
    ylim = _ylim(series)

    fig = Figure(figsize=FIG_INCHES, dpi=FIG_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    discard_labelled = False
    for s in series:
        name = "" if single else f"{s.branch or '(no branch)'}: "
        best_color = BEST_COLOR_SINGLE if single else s.color
        if s.discarded:
            ax.scatter([p[0] for p in s.discarded], [p[1] for p in s.discarded], c=DISCARD_COLOR, s=14,
                       alpha=0.7, zorder=2, label=None if discard_labelled else "discarded")
            discard_labelled = True
        if s.kept:
            ax.scatter([p[0] for p in s.kept], [p[1] for p in s.kept], c=s.color, s=50, zorder=4,
                       edgecolors="black", linewidths=0.5, label=f"{name}kept")
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
    else:
        ax.text(0.5, 0.5, "no experiment with a val_bpb yet", transform=ax.transAxes, ha="center",
                va="center", fontsize=14, color="#777777")
    ax.set_xlabel("Experiment #", fontsize=12)
    ax.set_ylabel("Validation BPB (lower is better)", fontsize=12)
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
                    legend=legend)


# -- the summary ---------------------------------------------------------------------------------


def summary(rows: list[Experiment]) -> dict:
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
    for s in progress_series(finished):
        kept_bpb = [y for _, y, _ in s.kept]
        base, best = s.baseline, (min(kept_bpb) if kept_bpb else None)
        improvement = (base - best) if base is not None and best is not None else None
        branches.append({"branch": s.branch, "baseline_bpb": base, "best_bpb": best, "improvement": improvement,
                         "improvement_pct": 100 * improvement / base if improvement is not None and base else None,
                         "experiments": sum(r.branch == s.branch for r in finished),
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


# -- the page ------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1640px;padding:0 16px;color:#222}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.muted{color:#777}.sum{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:8px 24px}
.sum div{background:#f6f8f6;border-radius:6px;padding:8px 12px}.sum b{display:block;font-size:18px}
img.plot{width:100%;max-width:1600px;border:1px solid #eee}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{padding:3px 8px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
th{cursor:pointer;user-select:none;background:#fafafa;position:sticky;top:0;white-space:nowrap}
th[data-dir=asc]::after{content:" \\25B2"}th[data-dir=desc]::after{content:" \\25BC"}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}td{word-break:break-word}
tr.keep td.st{color:#1e8449;font-weight:600}tr.discard td.st{color:#888}tr.crash td.st{color:#c0392b}
tr.timeout td.st{color:#b9770e}tr.rejected td.st{color:#8e44ad}tr.running td.st{color:#2471a3}
tr.invalid td.st{color:#d35400;font-weight:600}.warn{background:#fdf2e9!important;color:#a04000}
pre.diff{background:#fbfbfb;border:1px solid #eee;padding:8px;overflow-x:auto;font-size:12px;line-height:1.35}
pre.diff .add{color:#1e7d32;background:#eefbee}pre.diff .del{color:#b71c1c;background:#fdeeee}pre.diff .hunk{color:#6a1b9a}
.kept{margin:14px 0}.kept h3{font-size:15px;margin:0 0 4px}
"""

_JS = """
(function(){
  var table=document.getElementById('experiments');
  function key(row,i,num){var c=row.cells[i];var v=c.hasAttribute('data-v')?c.getAttribute('data-v'):c.textContent;
    if(num){var n=parseFloat(v);return isNaN(n)?null:n;}return v.toLowerCase();}
  function sortBy(th){
    var heads=th.parentNode.children,i=Array.prototype.indexOf.call(heads,th),num=th.classList.contains('num');
    var dir=th.getAttribute('data-dir')==='asc'?'desc':'asc';
    for(var h=0;h<heads.length;h++){heads[h].removeAttribute('data-dir');heads[h].removeAttribute('aria-sort');}
    th.setAttribute('data-dir',dir);th.setAttribute('aria-sort',dir==='asc'?'ascending':'descending');
    var body=table.tBodies[0],rows=Array.prototype.slice.call(body.rows);
    rows.sort(function(a,b){var x=key(a,i,num),y=key(b,i,num);
      if(x===null||y===null){return x===y?0:(x===null?1:-1);}  /* blanks last, either way */
      var c=x<y?-1:(x>y?1:0);return dir==='asc'?c:-c;});
    rows.forEach(function(r){body.appendChild(r);});
  }
  var heads=table.tHead.rows[0].cells;
  for(var h=0;h<heads.length;h++){heads[h].addEventListener('click',function(){sortBy(this);});}
  /* report.html?sort=KEY[&dir=desc] opens sorted: the same click a reader would make */
  var q=new URLSearchParams(location.search),want=q.get('sort');
  for(var k=0;want&&k<heads.length;k++){if(heads[k].getAttribute('data-key')===want){
    heads[k].click();if(q.get('dir')==='desc'){heads[k].click();}}}
})();
"""

REPORTED = "reported by train.py"  # figures only train.py can know: recorded as it printed them, never checked
_COLUMNS = (  # key, header, numeric; a header ending in * is a figure reported by train.py
    ("id", "id", True), ("branch", "branch", False), ("commit", "commit", False), ("status", "status", False),
    ("val_bpb", "val_bpb", True), ("delta", "delta", True), ("test_bpb", "test_bpb", True),
    ("samples", "runs", True), ("memory_gb", "mem GB", True),
    ("training_seconds", "train s", True), ("total_seconds", "total s", True), ("steps", "steps*", True),
    ("params_m", "params M*", True), ("error_class", "class", False), ("description", "description", False),
    ("started_at", "started", True),
)


def _e(text) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def _cell(key: str, exp: Experiment) -> str:
    value = _delta(exp) if key == "delta" else getattr(exp, key)
    if key == "commit":
        return f'<td data-v="{_e(exp.commit)}"><code>{_e(exp.short or "-")}</code></td>'
    if key == "status":
        return f'<td class="st">{_e(exp.status)}</td>'
    if key == "started_at":
        shown = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value)) if value else "-"
        return f'<td class="num" data-v="{_e(value if value is not None else "")}">{shown}</td>'
    if key in ("id", "steps", "samples"):
        return f'<td class="num">{_e(value if value is not None else "")}</td>'
    numeric = {"val_bpb": ".6f", "delta": "+.6f", "test_bpb": ".6f", "memory_gb": ".2f", "training_seconds": ".1f",
               "total_seconds": ".1f", "params_m": ".2f"}
    if key in numeric:
        if value is None:
            return '<td class="num" data-v=""></td>'
        return f'<td class="num" data-v="{value!r}">{format(value, numeric[key])}</td>'
    return f"<td>{_e(value)}</td>"


def _diff_html(diff: str | None) -> str:
    if diff is None:
        return '<p class="muted">diff unavailable (a commit is missing)</p>'
    if not diff.strip():
        return '<p class="muted">train.py is unchanged</p>'
    lines = []
    for line in diff.splitlines():
        cls = ("add" if line.startswith("+") and not line.startswith("+++") else
               "del" if line.startswith("-") and not line.startswith("---") else
               "hunk" if line.startswith("@@") else "")
        lines.append(f'<span class="{cls}">{_e(line)}</span>' if cls else _e(line))
    return '<pre class="diff">' + "\n".join(lines) + "</pre>"


def render_html(root: Path, rows: list[Experiment], progress: Progress, png: bytes) -> str:
    s = summary(rows)
    title = f"autoresearch report: {root.name}"
    cards = []
    for b in s["branches"]:
        if b["baseline_bpb"] is None:
            continue
        head = f"{_e(b['branch'] or '(no branch)')}: baseline &rarr; best val_bpb"
        pct = f" ({b['improvement_pct']:.2f} %)" if b["improvement_pct"] is not None else ""
        cards.append(f"<div>{head}<b>{b['baseline_bpb']:.6f} &rarr; {b['best_bpb']:.6f}</b>"
                     f"improvement {b['improvement']:.6f}{pct}</div>")
    rate = lambda v: "-" if v is None else f"{100 * v:.0f} %"  # noqa: E731
    by_class = ", ".join(f"{_e(k)} {100 * v:.0f} %" for k, v in s["crash_rate_by_class"].items()) or "none"
    cards += [
        f"<div>experiments<b>{s['experiments']}</b>{s['kept']} kept, {s['discarded']} discarded, "
        f"{s['crashed']} crashed, {s['timed_out']} timed out, {s['invalid']} invalid, "
        f"{s['rejected']} rejected</div>",
        f"<div>experiments / hour<b>{_fmt(s['experiments_per_hour'], '.1f')}</b>over "
        f"{_duration(s['span_seconds'])} of wall time</div>",
        f"<div>keep rate<b>{rate(s['keep_rate'])}</b>of the experiments that ran</div>",
        f"<div>crash rate<b>{rate(s['crash_rate'])}</b>{by_class}</div>",
        f"<div>total time spent<b>{_duration(s['time_spent_seconds'])}</b>summed over experiments</div>",
    ]
    line = lineage(root)
    if line["overfit"]:
        cards.insert(0, f'<div class="warn" id="overfit">val improves, test worsens<b>'
                     f'test {_fmt(line["baseline_test_bpb"])} &rarr; {_fmt(line["frontier_test_bpb"])}</b>'
                     f'while val_bpb went {_fmt(line["baseline_bpb"])} &rarr; {_fmt(line["frontier_bpb"])}: '
                     f'the branch may be fitting the validation set</div>')
    if line["noise_std"] is not None:
        cards.append(f'<div id="noise">noise floor (std of one run)<b>{line["noise_std"]:.6f}</b>'
                     f'pooled over repeated runs, {line["noise_dof"]} degrees of freedom</div>')
    heads = "".join(f'<th data-key="{k}"{" class=num" if num else ""}>{_e(h)}</th>' for k, h, num in _COLUMNS)
    body = "\n".join(f'<tr class="{_e(r.status)}" data-id="{r.id}">' + "".join(_cell(k, r) for k, _, _ in _COLUMNS)
                     + "</tr>" for r in rows)
    kept_parts = []
    for r in (r for r in rows if r.status == "keep"):
        delta = _delta(r)
        versus = (f"{delta:+.6f} vs its parent ({r.frontier_bpb:.6f})" if delta is not None
                  else "baseline (no parent val_bpb)")
        kept_parts.append(
            f'<div class="kept" id="kept-{r.id}"><h3>#{r.id} <code>{_e(r.short)}</code> '
            f"{_e(r.description)}</h3><div>val_bpb {_fmt(r.val_bpb)} &middot; {versus} &middot; "
            f"test_bpb {_fmt(r.test_bpb)} &middot; {_e(r.reason)} &middot; "
            f"branch {_e(r.branch)} &middot; parent <code>{_e(r.parent[:7] or '-')}</code></div>"
            f"<details{' open' if len(kept_parts) < 20 else ''}><summary>diff of train.py against its parent"
            f"</summary>{_diff_html(train_diff(root, r))}</details></div>")
    generated = time.strftime("%Y-%m-%d %H:%M:%S")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{_e(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{_e(title)}</h1>
<p class="muted">{_e(str(root))} &middot; generated {generated} &middot; {_e(progress.title)}</p>
<h2>Summary</h2>
<div class="sum" id="summary">{''.join(cards)}</div>
<h2>Progress</h2>
<img class="plot" id="progress" alt="{_e(progress.title)}" width="{progress.size_px[0]}" height="{progress.size_px[1]}"
 src="data:image/png;base64,{base64.b64encode(png).decode()}">
<h2>Experiments</h2>
<p class="muted">Click a column header to sort (again to reverse). * {REPORTED}, not measured by the harness;
mem GB is the harness's own measurement of the process tree.</p>
<table id="experiments"><thead><tr>{heads}</tr></thead>
<tbody>
{body}
</tbody></table>
<h2>Kept experiments</h2>
{''.join(kept_parts) or '<p class="muted">nothing kept yet</p>'}
<script>{_JS}</script>
</body></html>
"""


def _ignore_inside(root: Path, out: Path) -> None:
    """A report folder inside the workspace ignores itself, so it never counts as an out-of-scope change."""
    try:
        out.resolve().relative_to(root.resolve())
    except ValueError:
        return
    marker = out / ".gitignore"
    if not marker.exists():
        marker.write_text("# written by autoresearch report: nothing here belongs to the experiment history\n*\n")


def write_report(root: Path, out: Path | None = None) -> dict:
    """progress.png and report.html into `out` (default: <workspace>/report/). Returns their paths."""
    root = Path(root).resolve()
    out = Path(out) if out is not None else root / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    _ignore_inside(root, out)
    rows = _rows(root)
    png_path = out / PNG_NAME
    progress = plot_progress(rows, png_path)
    html_path = out / HTML_NAME
    tmp = html_path.with_name(HTML_NAME + ".tmp")
    tmp.write_text(render_html(root, rows, progress, png_path.read_bytes()), encoding="utf-8")
    tmp.replace(html_path)
    return {"png": png_path, "html": html_path, "progress": progress}


# -- status --json, show, lineage ----------------------------------------------------------------


def status_json(root: Path) -> dict:
    """The status summary plus every row, JSON-ready."""
    from .status import summarize

    s = summarize(root)
    frontier = s["frontier"]
    return {"branch": s["branch"], "experiments": s["experiments"], "kept": s["kept"],
            "best_val_bpb": s["best_val_bpb"], "frontier": frontier.commit if frontier else None,
            "frontier_id": frontier.id if frontier else None,
            "frontier_val_bpb": frontier.val_bpb if frontier else None,
            "frontier_test_bpb": frontier.test_bpb if frontier else None,
            "noise_std": s["noise_std"], "noise_dof": s["noise_dof"], "overfit": s["overfit"],
            "rows": [_row_dict(r) for r in s["rows"]]}


def find_experiment(rows: list[Experiment], ref: str) -> Experiment:
    """A ledger id (digits) first, else a commit prefix; an ambiguous or unknown ref is an error."""
    ref = ref.strip()
    if not ref:
        raise ReportError("give a ledger id or a commit")
    if ref.isdigit():
        for r in rows:
            if r.id == int(ref):
                return r
    matches = [r for r in rows if r.commit and r.commit.startswith(ref.lower())]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        ids = ", ".join(str(r.id) for r in matches)
        raise ReportError(f"{ref!r} matches several experiments (ids {ids}): give more of the commit")
    raise ReportError(f"no experiment with id or commit {ref!r} in the ledger")


def _log_tail(root: Path, exp: Experiment, lines: int) -> str | None:
    if not exp.log_path:
        return None
    path = Path(exp.log_path)
    path = path if path.is_absolute() else root / path
    if not path.exists():
        return None
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def show(root: Path, ref: str, tail: int = 20) -> dict:
    """One experiment by ledger id or commit (prefix): its row, delta, diff against its parent, log tail."""
    root = Path(root)
    exp = find_experiment(_rows(root), ref)
    info = _row_dict(exp)
    info["parent_val_bpb"] = exp.frontier_bpb
    info["diff"] = train_diff(root, exp)
    info["log_tail"] = _log_tail(root, exp, tail)
    return info


def format_show(info: dict) -> str:
    delta = (f" ({info['delta']:+.6f} vs parent {info['parent_val_bpb']:.6f})" if info["delta"] is not None else "")
    out = [f"experiment {info['id']}  {info['status']}  commit {info['commit'] or '-'}",
           f"branch       {info['branch'] or '-'}",
           f"parent       {info['parent'] or '-'}",
           f"description  {info['description']}",
           f"val_bpb      {_fmt(info['val_bpb'])}{delta}",
           f"memory_gb    {_fmt(info['memory_gb'], '.3f')} (measured by the harness)"
           f"    training {_fmt(info['training_seconds'], '.1f')} s    total {_fmt(info['total_seconds'], '.1f')} s",
           f"{REPORTED}: steps {_fmt(info['steps'], 'd')}    params {_fmt(info['params_m'], '.2f')} M"
           f"    mfu {_fmt(info['mfu_percent'], '.1f')} %",
           f"reason       {info['reason'] or '-'}"]
    if info["error_class"]:
        out.append(f"error        {info['error_class']}")
    if info["started_at"]:
        out.append("started      " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started_at"])))
    out.append("")
    if info["diff"] is None:
        out.append("--- diff of train.py against its parent: unavailable")
    else:
        out.append("--- diff of train.py against its parent" + ("" if info["diff"] else ": none"))
        if info["diff"]:
            out.append(info["diff"])
    if info["log_tail"] is not None:
        out += ["", f"--- log tail ({info['log_path']})", info["log_tail"]]
    elif info["error_excerpt"]:
        out += ["", "--- error excerpt", info["error_excerpt"].rstrip()]
    return "\n".join(out)


def lineage(root: Path, branch: str | None = None) -> dict:
    """The kept commits of the branch (default: the current one), oldest first: the research notebook."""
    root = Path(root)
    branch = branch or current_branch(root) or ""
    kept = {r.commit: r for r in _rows(root) if r.status == "keep" and r.branch == branch and r.commit}
    log = _git_or_none(root, "log", "--first-parent", "--reverse", "--format=%H%x1f%cI%x1f%s",
                       f"refs/heads/{branch}") if branch else None
    chain: list[tuple[Experiment, str]] = []
    if log is not None:
        for line in log.splitlines():
            commit, date, _subject = (line.split("\x1f") + ["", ""])[:3]
            if commit in kept:
                chain.append((kept[commit], date))
    else:  # no git history to follow: the ledger's order
        chain = [(r, "") for r in sorted(kept.values(), key=lambda r: r.id)]
    steps = []
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
                      "val_up_test_down": delta is not None and test_delta is not None and delta < 0 < test_delta})
        previous = exp.val_bpb if exp.val_bpb is not None else previous
        previous_test = exp.test_bpb if exp.test_bpb is not None else previous_test
    frontier = steps[-1] if steps else None
    improvement = (baseline - frontier["val_bpb"]) if frontier and baseline is not None else None
    tested = [st for st in steps if st["test_bpb"] is not None]
    base_test = tested[0]["test_bpb"] if tested else None
    front_test = tested[-1]["test_bpb"] if tested else None
    overfit = (len(tested) > 1 and tested[-1]["val_bpb"] < tested[0]["val_bpb"] and front_test > base_test)
    noise = _noise_floor(root, branch)
    return {"branch": branch, "baseline_bpb": baseline, "frontier_bpb": frontier["val_bpb"] if frontier else None,
            "frontier": frontier["commit"] if frontier else None, "improvement": improvement,
            "improvement_pct": 100 * improvement / baseline if improvement is not None and baseline else None,
            "baseline_test_bpb": base_test, "frontier_test_bpb": front_test, "overfit": overfit,
            "flagged_steps": [st["id"] for st in steps if st["val_up_test_down"]],
            "noise_std": noise.std if noise else None, "noise_dof": noise.dof if noise else 0,
            "steps": steps}


def _noise_floor(root: Path, branch: str):
    from .selection import pooled_noise

    ledger = Ledger(root, readonly=True)
    try:
        return pooled_noise(ledger.sample_groups(branch))
    finally:
        ledger.close()


def format_lineage(data: dict) -> str:
    if not data["steps"]:
        return f"branch {data['branch'] or '-'}: nothing kept yet"
    pct = f", {-data['improvement_pct']:+.2f} %" if data["improvement_pct"] is not None else ""
    out = [f"branch {data['branch']}: {len(data['steps'])} kept, val_bpb {_fmt(data['baseline_bpb'])} -> "
           f"{_fmt(data['frontier_bpb'])} ({_fmt(data['improvement'] and -data['improvement'], '+.6f')}{pct}); "
           f"test_bpb {_fmt(data['baseline_test_bpb'])} -> {_fmt(data['frontier_test_bpb'])}"]
    if data["noise_std"] is not None:
        out.append(f"noise floor: std {data['noise_std']:.6f} of one run ({data['noise_dof']} dof)")
    if data["overfit"]:
        out.append("WARNING: val_bpb improved while test_bpb got worse: the branch may be fitting the validation set")
    out.append("")
    out.append(f"{'commit':7s}  {'date':16s}  {'val_bpb':8s}  {'delta':>9s}  {'test_bpb':8s}  {'delta':>9s}")
    for st in data["steps"]:
        delta = "baseline " if st["delta"] is None else f"{st['delta']:+.6f}"
        tdelta = "" if st["test_delta"] is None else f"{st['test_delta']:+.6f}"
        flag = "  <- val better, test worse" if st["val_up_test_down"] else ""
        out.append(f"{st['short']}  {st['date'][:16].replace('T', ' '):16s}  {_fmt(st['val_bpb'])}  {delta:>9s}  "
                   f"{_fmt(st['test_bpb'])}  {tdelta:>9s}  #{st['id']}  {st['description']}{flag}")
    return "\n".join(out)


# -- MLflow (optional) ---------------------------------------------------------------------------


def default_mlflow_uri(root: Path) -> str:
    return f"sqlite:///{(Path(root).resolve() / STATE_DIR / 'mlflow' / 'mlflow.db').as_posix()}"


def _artifact_location(uri: str) -> str | None:
    """Artifacts of a local store live beside it (never in the cwd, which is the workspace)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "artifacts").resolve().as_uri()
    if uri.startswith("file:") or ":" not in uri:
        return None  # a file store keeps artifacts inside itself
    return None  # a server decides


def log_mlflow(root: Path, uri: str | None = None, experiment_name: str | None = None) -> dict:
    """One MLflow run per finished ledger row, tagged with its ledger id; rows already logged are skipped."""
    try:
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise MlflowUnavailable("MLflow logging needs the optional package mlflow: "
                                "pip install 'autoresearch[mlflow]' (or pip install mlflow)") from None
    root = Path(root).resolve()
    uri = uri or os.environ.get(MLFLOW_ENV) or default_mlflow_uri(root)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    if uri.startswith("file:") or ":" not in uri:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3 refuses file stores otherwise
    client = MlflowClient(tracking_uri=uri)
    name = experiment_name or f"autoresearch {root.name}"
    found = client.get_experiment_by_name(name)
    exp_id = found.experiment_id if found else client.create_experiment(name, artifact_location=_artifact_location(uri))

    logged: dict[int, str] = {}
    token = None
    while True:
        page = client.search_runs([exp_id], max_results=1000, page_token=token)
        for run in page:
            tags = run.data.tags
            if tags.get(MLFLOW_WORKSPACE_TAG) != str(root) or MLFLOW_ID_TAG not in tags:
                continue
            if tags.get(MLFLOW_DONE_TAG) == "1":
                logged[int(tags[MLFLOW_ID_TAG])] = run.info.run_id
            else:  # a half-written run from an interrupted call: replace it
                client.delete_run(run.info.run_id)
        token = page.token
        if not token:
            break

    added, skipped = [], []
    for exp in _rows(root):
        if exp.status == "running":
            continue
        if exp.id in logged:
            skipped.append(exp.id)
            continue
        start = int((exp.started_at or time.time()) * 1000)
        end = int((exp.finished_at or exp.started_at or time.time()) * 1000)
        tags = {MLFLOW_ID_TAG: str(exp.id), MLFLOW_WORKSPACE_TAG: str(root), "status": exp.status,
                "commit": exp.commit, "branch": exp.branch, "error_class": exp.error_class,
                "mlflow.note.content": exp.description}
        run = client.create_run(exp_id, start_time=start, tags=tags,
                                run_name=f"{exp.id:04d} {_label(exp.description)}")
        rid = run.info.run_id
        metrics = {k: getattr(exp, k) for k in ("val_bpb", "memory_gb", "training_seconds", "total_seconds",
                                                "train_wall_seconds", "eval_wall_seconds", "steps", "params_m",
                                                "mfu_percent", "frontier_bpb")}
        metrics["delta"] = _delta(exp)
        params = {"description": " ".join(exp.description.split())[:500], "parent": exp.parent,
                  "reason": exp.reason[:500]}
        client.log_batch(rid, metrics=[Metric(k, float(v), end, 0) for k, v in metrics.items()
                                       if v is not None and math.isfinite(v)],
                         params=[Param(k, v) for k, v in params.items()])
        diff = train_diff(root, exp)
        if diff:
            client.log_text(rid, diff + "\n", "train.py.diff")
        if exp.log_path and (root / exp.log_path).exists():
            client.log_artifact(rid, str(root / exp.log_path))
        if exp.error_excerpt:
            client.log_text(rid, exp.error_excerpt, "error_excerpt.txt")
        client.log_batch(rid, tags=[RunTag(MLFLOW_DONE_TAG, "1")])
        client.set_terminated(rid, status="FINISHED" if exp.status in VALID else
                              "KILLED" if exp.status == "rejected" else "FAILED", end_time=end)
        added.append(exp.id)
    return {"uri": uri, "experiment": name, "experiment_id": exp_id, "added": added, "skipped": skipped}


def to_json(data) -> str:
    return json.dumps(data, indent=2, default=str)
