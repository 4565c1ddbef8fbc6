"""Watching a campaign: progress.png keeps the kept range readable and still shows every discarded run, and
`autoresearch status` fits its table to the width it is given.

Nothing here trains: the ledgers are made up, in the test.
"""

from __future__ import annotations

import time

from autoresearch.git import git
from autoresearch.history import reading
from autoresearch.ledger import Experiment, Ledger
from autoresearch.plot import plot_progress
from autoresearch.status import print_status
from autoresearch.workspace import init_workspace

LONG = ("optuna: EMBEDDING_LR 0.6 -> 0.84 (x1.4), MATRIX_LR 0.04 -> 0.056 (x1.4), WARMDOWN_RATIO 0.5 -> 0.6 "
        "(+0.1); tpe near the frontier, 12 results")


def rows_of(values: list[tuple[str, float | None]]) -> list[Experiment]:
    now = time.time()
    return [Experiment(id=i + 1, branch="autoresearch/w", status=status, val_bpb=v, description=f"run {i + 1}",
                       frontier_bpb=values[0][1], started_at=now, finished_at=now + 1, commit=f"{i:040x}")
            for i, (status, v) in enumerate(values)]


def test_discarded_runs_far_above_the_kept_range_sit_on_the_top_edge(tmp_path):
    rows = rows_of([("keep", 1.750), ("discard", 1.88), ("keep", 1.742), ("discard", 2.61), ("discard", 1.746),
                    ("crash", None)])
    progress = plot_progress(rows, tmp_path / "progress.png")
    lo, hi = progress.ylim
    assert hi - lo < 0.02                                  # the kept range (1.742 .. 1.750) fills the axis
    (series,) = progress.series
    assert [p[1] for p in series.above(progress.ylim)] == [1.88, 2.61]   # worse than the axis: on its edge
    assert progress.above == 2 and "discarded, above the axis (value below)" in progress.legend
    assert "discarded" in progress.legend                  # 1.746 is inside the range: an ordinary dot
    assert (tmp_path / "progress.png").stat().st_size > 0


def test_a_discarded_run_better_than_the_frontier_stays_on_the_axis(tmp_path):
    rows = rows_of([("keep", 1.750), ("discard", 1.740)])   # inside the noise band: discarded, yet lower
    progress = plot_progress(rows, tmp_path / "progress.png")
    assert progress.ylim[0] < 1.740 < 1.750 < progress.ylim[1] and progress.above == 0


def test_only_a_baseline_and_worse_runs_still_show_the_work(tmp_path):
    rows = rows_of([("keep", 1.750)] + [("discard", 1.9 + i / 10) for i in range(8)])
    progress = plot_progress(rows, tmp_path / "progress.png")
    assert progress.above == 8 and progress.experiments == 9


def workspace_with(tmp_path, descriptions: list[str]):
    root = tmp_path / "ws"
    init_workspace(root, "cpu", tag="w")
    head = git(root, "rev-parse", "HEAD")
    ledger = Ledger(root)
    now = time.time()
    for i, text in enumerate(descriptions):
        ledger.insert(Experiment(branch="autoresearch/w", parent=head, commit=head, status="keep" if i == 0 else "discard",
                                 description=text, val_bpb=1.75 + i / 100, frontier_bpb=None if i == 0 else 1.75,
                                 started_at=now, finished_at=now + 1))
    ledger.close()
    return root


def test_status_fits_the_table_to_the_width_and_cuts_the_description(tmp_path, monkeypatch, capsys):
    root = workspace_with(tmp_path, ["baseline", LONG, "short one"])
    monkeypatch.setenv("COLUMNS", "100")
    with reading(root) as h:
        print_status(h)
    lines = capsys.readouterr().out.splitlines()
    table = lines[lines.index(next(line for line in lines if line.lstrip().startswith("id"))):]
    assert len(table) == 4                                              # a header and one line per row
    assert all(len(line.rstrip()) <= 100 for line in table)
    assert "…" in table[2] and table[2].split()[-1] != "results"        # the long one is cut...
    assert "optuna: EMBEDDING_LR" in table[2] and "short one" in table[3]   # ...and the columns stay whole
    assert all(len(line.split()) >= 5 for line in table[1:])


def test_status_piped_without_a_width_cuts_nothing(tmp_path, monkeypatch, capsys):
    root = workspace_with(tmp_path, ["baseline", LONG])
    monkeypatch.delenv("COLUMNS", raising=False)
    with reading(root) as h:
        print_status(h)
    assert LONG in capsys.readouterr().out


def test_show_breaks_an_experiments_wall_time_down():
    from autoresearch.history import wall_time

    info = {"total_seconds": 45.0, "train_wall_seconds": 30.0, "startup_seconds": 12.0, "training_seconds": 15.0,
            "export_seconds": 2.0, "eval_wall_seconds": 9.0}
    assert wall_time(info) == ("45.0 s = start-up 12.0 + training 15.0 + export 2.0 + rest of train.py 1.0 + "
                               "evaluation 9.0 + harness 6.0 s")
    assert wall_time({"total_seconds": None, "train_wall_seconds": None}) is None   # a rejected experiment
