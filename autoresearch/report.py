"""`autoresearch report [--out DIR]`: what happened overnight, as progress.png and report.html.

    progress.png   the plot (plot.py)
    report.html    one self-contained page: the summary, the plot, a sortable table of every experiment, what
                   the agents were asked and what it cost over time, and each kept change's diff against its parent

The page opens without network: its stylesheet and script (page/report.css, page/report.js, package data)
are inlined and the plot is a data URI. The default folder is report/ in the workspace, which ignores
itself. Everything here only reads the ledger and git (history.py); nothing is committed.
"""

from __future__ import annotations

import base64
import html
import time
from importlib import resources
from pathlib import Path

from .history import REPORTED, History, cost_text, delta_of, duration, fmt, lineage, spending, summary, train_diff
from .layout import CANDIDATE, REPORT
from .ledger import Experiment
from .plot import Progress, plot_progress

PNG_NAME = "progress.png"
HTML_NAME = "report.html"
_COLUMNS = (  # key, header, numeric; a header ending in * is a figure reported by the candidate
    ("id", "id", True), ("branch", "branch", False), ("commit", "commit", False), ("status", "status", False),
    ("val_bpb", "val_bpb", True), ("delta", "delta", True), ("test_bpb", "test_bpb", True),
    ("samples", "runs", True), ("memory_gb", "mem GB", True),
    ("training_seconds", "train s", True), ("total_seconds", "total s", True), ("steps", "steps*", True),
    ("params_m", "params M*", True), ("error_class", "class", False), ("agent", "agent", False),
    ("model", "model", False), ("cost_usd", "cost $", True), ("description", "description", False),
    ("started_at", "started", True),
)
_SWARM_COLUMNS = (("worker", "worker", False), ("platform", "platform", False))   # shown for a swarm's rows


def _page_file(name: str) -> str:
    return resources.files("autoresearch.page").joinpath(name).read_text(encoding="utf-8")


def _e(text) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def _cell(key: str, exp: Experiment) -> str:
    value = delta_of(exp) if key == "delta" else getattr(exp, key)
    if key == "commit":
        return f'<td data-v="{_e(exp.commit)}"><code>{_e(exp.short or "-")}</code></td>'
    if key == "status":
        return f'<td class="st">{_e(exp.status)}</td>'
    if key == "started_at":
        shown = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value)) if value else "-"
        return f'<td class="num" data-v="{_e(value if value is not None else "")}">{shown}</td>'
    if key in ("id", "steps", "samples"):
        return f'<td class="num">{_e(value if value is not None else "")}</td>'
    if key == "cost_usd":
        shown = "" if value is None else ("~" if exp.cost_estimated else "") + f"{value:.4f}"
        return f'<td class="num" data-v="{_e(value if value is not None else "")}">{shown}</td>'
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
        return f'<p class="muted">{CANDIDATE} is unchanged</p>'
    lines = []
    for line in diff.splitlines():
        cls = ("add" if line.startswith("+") and not line.startswith("+++") else
               "del" if line.startswith("-") and not line.startswith("---") else
               "hunk" if line.startswith("@@") else "")
        lines.append(f'<span class="{cls}">{_e(line)}</span>' if cls else _e(line))
    return '<pre class="diff">' + "\n".join(lines) + "</pre>"


def render_html(h: History, progress: Progress, png: bytes) -> str:
    root, rows = h.root, h.rows
    s = summary(rows, h.task.direction)
    title = f"autoresearch report: {root.name}"
    cards = []
    for b in s["branches"]:
        if b["baseline_bpb"] is None:
            continue
        head = f"{_e(b['branch'] or '(no branch)')}: baseline &rarr; best {_e(h.metric)} ({h.task.better} is better)"
        pct = f" ({b['improvement_pct']:.2f} %)" if b["improvement_pct"] is not None else ""
        cards.append(f"<div>{head}<b>{b['baseline_bpb']:.6f} &rarr; {b['best_bpb']:.6f}</b>"
                     f"improvement {b['improvement']:.6f}{pct}</div>")
    rate = lambda v: "-" if v is None else f"{100 * v:.0f} %"  # noqa: E731
    by_class = ", ".join(f"{_e(k)} {100 * v:.0f} %" for k, v in s["crash_rate_by_class"].items()) or "none"
    cards += [
        f"<div>experiments<b>{s['experiments']}</b>{s['kept']} kept, {s['discarded']} discarded, "
        f"{s['crashed']} crashed, {s['timed_out']} timed out, {s['invalid']} invalid, "
        f"{s['rejected']} rejected</div>",
        f"<div>experiments / hour<b>{fmt(s['experiments_per_hour'], '.1f')}</b>over "
        f"{duration(s['span_seconds'])} of wall time</div>",
        f"<div>keep rate<b>{rate(s['keep_rate'])}</b>of the experiments that ran</div>",
        f"<div>crash rate<b>{rate(s['crash_rate'])}</b>{by_class}</div>",
        f"<div>total time spent<b>{duration(s['time_spent_seconds'])}</b>summed over experiments</div>",
    ]
    sp = spending(h)
    if sp["proposals"]:
        per_kept = cost_text(sp["cost_per_kept_usd"], sp["cost_estimated"])
        unknown = f", {sp['cost_unknown']} with no known cost" if sp["cost_unknown"] else ""
        cards += [
            f'<div id="agent-cost">agent cost<b>{_e(cost_text(sp["cost_usd"], sp["cost_estimated"]))}</b>'
            f'{sp["proposals"]} proposals ({sp["failed"]} failed){unknown}; {sp["input_tokens"]:,} tokens in / '
            f'{sp["output_tokens"]:,} out</div>',
            f'<div id="cost-per-kept">cost per kept improvement<b>{_e(per_kept)}</b>'
            f'{sp["kept_improvements"]} kept improvement(s) proposed by an agent</div>',
        ]
    line = lineage(h)
    if line["overfit"]:
        cards.insert(0, f'<div class="warn" id="overfit">val improves, test worsens<b>'
                     f'test {fmt(line["baseline_test_bpb"])} &rarr; {fmt(line["frontier_test_bpb"])}</b>'
                     f'while val_bpb went {fmt(line["baseline_bpb"])} &rarr; {fmt(line["frontier_bpb"])}: '
                     f'the branch may be fitting the validation set</div>')
    if line["noise_std"] is not None:
        cards.append(f'<div id="noise">noise floor (std of one run)<b>{line["noise_std"]:.6f}</b>'
                     f'pooled over repeated runs, {line["noise_dof"]} degrees of freedom</div>')
    columns = _COLUMNS[:-2] + _SWARM_COLUMNS + _COLUMNS[-2:] if any(r.worker for r in rows) else _COLUMNS
    heads = "".join(f'<th data-key="{k}"{" class=num" if num else ""}>{_e(name)}</th>' for k, name, num in columns)
    body = "\n".join(f'<tr class="{_e(r.status)}" data-id="{r.id}">' + "".join(_cell(k, r) for k, _, _ in columns)
                     + "</tr>" for r in rows)
    kept_parts = []
    for r in (r for r in rows if r.status == "keep"):
        delta = delta_of(r)
        versus = (f"{delta:+.6f} vs its parent ({r.frontier_bpb:.6f})" if delta is not None
                  else "baseline (no parent val_bpb)")
        kept_parts.append(
            f'<div class="kept" id="kept-{r.id}"><h3>#{r.id} <code>{_e(r.short)}</code> '
            f"{_e(r.description)}</h3><div>val_bpb {fmt(r.val_bpb)} &middot; {versus} &middot; "
            f"test_bpb {fmt(r.test_bpb)} &middot; {_e(r.reason)} &middot; "
            f"branch {_e(r.branch)} &middot; parent <code>{_e(r.parent[:7] or '-')}</code></div>"
            f"<details{' open' if len(kept_parts) < 20 else ''}><summary>diff of {CANDIDATE} against its parent"
            f"</summary>{_diff_html(train_diff(root, r))}</details></div>")
    generated = time.strftime("%Y-%m-%d %H:%M:%S")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{_e(title)}</title><style>
{_page_file("report.css")}</style></head>
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
{_spending_html(sp)}
<h2>Kept experiments</h2>
{''.join(kept_parts) or '<p class="muted">nothing kept yet</p>'}
<script>
{_page_file("report.js")}</script>
</body></html>
"""


def _spending_html(sp: dict) -> str:
    """Every proposal attempt, oldest first, with the cumulative cost: what the agents cost over time."""
    if not sp["proposals"]:
        return ""
    rows = []
    for a in sp["over_time"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(a["at"])) if a["at"] else "-"
        tokens = f"{a['input_tokens'] or 0:,} / {a['output_tokens'] or 0:,}"
        exp = f"#{a['experiment_id']}" if a["experiment_id"] is not None else ""
        note = a["error"] or (f"refused: {a['refused']}" if a["refused"] else "")
        rows.append(f"<tr><td>{when}</td><td>{_e(a['agent'])}</td><td>{_e(a['model'])}</td><td>{_e(a['outcome'])}</td>"
                    f'<td class="num">{tokens}</td><td class="num">{fmt(a["cost_usd"], ".4f", "")}</td>'
                    f'<td class="num">{fmt(a["cumulative_usd"], ".4f", "")}</td><td>{exp}</td><td>{_e(note)}</td></tr>')
    label = " (estimates)" if sp["cost_estimated"] else ""
    return (f'<h2>Agent spending</h2><p class="muted">Every request for a proposal, failures included; a cost '
            f'is shown only where one is known{label}.</p><table id="spending"><thead><tr><th>asked</th><th>agent</th>'
            f'<th>model</th><th>outcome</th><th class="num">tokens in / out</th><th class="num">cost $</th>'
            f'<th class="num">cumulative $</th><th>experiment</th><th>error / refused</th></tr></thead><tbody>'
            + "\n".join(rows) + "</tbody></table>")


def _ignore_inside(root: Path, out: Path) -> None:
    """A report folder inside the workspace ignores itself, so it never counts as an out-of-scope change."""
    try:
        out.resolve().relative_to(root.resolve())
    except ValueError:
        return
    marker = out / ".gitignore"
    if not marker.exists():
        marker.write_text("# written by autoresearch report: nothing here belongs to the experiment history\n*\n")


def write_report(h: History, out: Path | None = None) -> dict:
    """progress.png and report.html into `out` (default: <workspace>/report/). Returns their paths."""
    out = Path(out) if out is not None else h.root / REPORT
    out.mkdir(parents=True, exist_ok=True)
    _ignore_inside(h.root, out)
    png_path = out / PNG_NAME
    progress = plot_progress(h.rows, png_path, h.metric, h.task.direction)
    html_path = out / HTML_NAME
    tmp = html_path.with_name(HTML_NAME + ".tmp")
    tmp.write_text(render_html(h, progress, png_path.read_bytes()), encoding="utf-8")
    tmp.replace(html_path)
    return {"png": png_path, "html": html_path, "progress": progress}
