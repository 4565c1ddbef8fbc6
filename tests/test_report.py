"""`autoresearch run`'s three verdicts, then `report / show / lineage / status --json`, checked against a
ledger of four REAL CPU runs.

The module's workspace runs, with a 3 s budget: a crippled baseline (learning rates / 1000, kept), the
restored learning rates (better, kept), the crippled file again (worse, discarded) and a syntax error (crash).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoresearch.history import reading
from autoresearch.ledger import Experiment, Ledger
from autoresearch.mlflow_export import MLFLOW_ENV, MLFLOW_ID_TAG, MlflowUnavailable, log_mlflow
from autoresearch.plot import BRANCH_COLORS, FIG_DPI, FIG_INCHES
from autoresearch.report import write_report
from conftest import rows as ledger_dicts
from conftest import run_cli

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
SLOW_LR = (("EMBEDDING_LR = 0.6 ", "EMBEDDING_LR = 0.0006 "), ("MATRIX_LR = 0.04 ", "MATRIX_LR = 0.00004 "),
           ("UNEMBEDDING_LR = 0.004 ", "UNEMBEDDING_LR = 0.000004 "))
DESCRIPTIONS = ["baseline with learning rates / 1000", "restore the learning rates", "cripple again",
                "break the syntax"]
SIZE_PX = (FIG_INCHES[0] * FIG_DPI, FIG_INCHES[1] * FIG_DPI)


def git(root, *args):
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()


def rows(root: Path) -> list[Experiment]:
    ledger = Ledger(root)
    try:
        return ledger.all()
    finally:
        ledger.close()


@pytest.fixture(scope="module")
def lab(cache_dir, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("report")
    root = base / "lab"
    proc = run_cli("init", str(root), "--profile", "cpu", "--budget", "3", "--tag", "r", cwd=base)
    assert proc.returncode == 0, proc.stderr
    assert run_cli("prepare", cwd=root).returncode == 0
    train = root / "train.py"
    pristine = train.read_text()
    crippled = pristine
    for old, new in SLOW_LR:
        assert old in crippled, old
        crippled = crippled.replace(old, new, 1)
    assert "import gc\n" in pristine
    broken = pristine.replace("import gc\n", "import gc\ndef broken(:\n", 1)
    steps = []
    for text, message, verdict in ((crippled, DESCRIPTIONS[0], "keep"), (pristine, DESCRIPTIONS[1], "keep"),
                                   (crippled, DESCRIPTIONS[2], "discard"), (broken, DESCRIPTIONS[3], "crash")):
        train.write_text(text)
        proc = run_cli("run", "-m", message, "--rule", "strict", cwd=root)
        assert proc.stdout.startswith(verdict), proc.stdout + proc.stderr
        steps.append({"stdout": proc.stdout, "head": git(root, "rev-parse", "HEAD"), "train_py": train.read_text(),
                      "subject": git(root, "log", "-1", "--format=%s"), "porcelain": git(root, "status", "--porcelain")})
    (base / "steps.json").write_text(json.dumps({"pristine": pristine, "crippled": crippled, "steps": steps}))
    return root


@pytest.fixture(scope="module")
def ledger_rows(lab) -> list[Experiment]:
    r = rows(lab)
    assert [x.status for x in r] == ["keep", "keep", "discard", "crash"]
    assert [x.description for x in r] == DESCRIPTIONS
    assert r[1].val_bpb < r[0].val_bpb < r[2].val_bpb + 0.5 and r[2].val_bpb > r[1].val_bpb
    return r


@pytest.fixture(scope="module")
def cli_report(lab, ledger_rows) -> Path:
    """`autoresearch report` with its default folder, as a user runs it."""
    proc = run_cli("report", cwd=lab, env={MLFLOW_ENV: ""})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 experiments, 2 kept" in proc.stdout
    return lab / "report"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


# -- progress.png --------------------------------------------------------------------------------


def test_baseline_keep_better_keep_worse_discard(lab, ledger_rows):
    """What `run` did after each of the module's runs: a keep commits, a better result commits on it, a worse
    one is discarded (the tree back at the frontier, nothing lost: the candidate is kept under a ref)."""
    saved = json.loads((lab.parent / "steps.json").read_text())
    pristine, crippled, (first, better, worse, _) = saved["pristine"], saved["crippled"], saved["steps"]
    assert first["subject"] == DESCRIPTIONS[0] and first["porcelain"] == ""
    assert "vs frontier" in better["stdout"] and git(lab, "rev-parse", f"{better['head']}~1") == first["head"]
    assert worse["head"] == better["head"]                     # reset to the frontier
    assert worse["train_py"] == pristine and worse["porcelain"] == ""   # the tree is the frontier's
    discarded = git(lab, "rev-parse", "refs/autoresearch/discarded/0003")
    assert git(lab, "show", f"{discarded}:train.py") == crippled.rstrip("\n")  # nothing lost

    r = ledger_dicts(lab)[:3]
    assert [x["status"] for x in r] == ["keep", "keep", "discard"]
    assert r[1]["val_bpb"] < r[0]["val_bpb"] and r[2]["val_bpb"] > r[1]["val_bpb"]
    # kept: the test split scored, by the val split's evaluator going on; discarded: that scoring stopped unread
    for x in r:
        run = lab / "runs" / f"{x['id']:04d}"
        scored = json.loads((run / "eval-test.json").read_text()) if x["status"] == "keep" else None
        assert (scored["test_bpb"], scored["split"]) == (x["test_bpb"], "test") if scored else x["test_bpb"] is None
        assert (run / "eval-val.json").is_file() and (run / "eval-test.json").exists() == (x["status"] == "keep")
        assert not (run / "eval-test.json.tmp").exists()
    assert r[1]["parent"] == first["head"] and r[2]["parent"] == better["head"]
    # the training window ends at a point fixed from launch (start-up allowance + budget): start-up the
    # template does not use is trained in; the parent sees the markers by polling, exact to 2 poll periods
    from autoresearch.harness.settings import Settings
    from autoresearch.trial import POLL_SECONDS

    rules = Settings.load(lab).profile.time_rules
    assert (rules.startup, rules.budget) == (10.0, 3.0)
    used = [x["startup_seconds"] + x["training_seconds"] for x in r]
    assert all(rules.training_ends - 2 * POLL_SECONDS <= u < rules.deadline for u in used), used
    assert all(x["train_wall_seconds"] < rules.deadline + rules.exit_grace for x in r)
    assert all(x["total_seconds"] > x["train_wall_seconds"] for x in r)
    assert all(x["memory_gb"] > 0.05 and x["steps"] > 0 and x["params_m"] > 1 for x in r)
    lines = (lab / "results.tsv").read_text().splitlines()
    assert lines[0] == "commit\tval_bpb\tmemory_gb\tstatus\tdescription"
    t = [line.split("\t") for line in lines[1:]]
    assert [row[3] for row in t] == ["keep", "keep", "discard", "crash"]
    assert [row[0] for row in t[:3]] == [x["commit"][:7] for x in r]
    assert [float(row[1]) for row in t[:3]] == [round(x["val_bpb"], 6) for x in r]

    status = run_cli("status", cwd=lab)
    assert status.returncode == 0
    assert "4 experiments, 2 kept" in status.stdout and better["head"][:7] in status.stdout


def test_report_files_are_written_and_stay_out_of_git(lab, cli_report):
    assert (cli_report / "progress.png").is_file() and (cli_report / "report.html").is_file()
    assert png_size(cli_report / "progress.png") == SIZE_PX
    assert "report/" in (lab / ".gitignore").read_text().splitlines()
    assert git(lab, "status", "--porcelain", "--untracked-files=all") == ""  # nothing for the guard to reject
    assert "report" not in git(lab, "ls-files")


def test_progress_plot_matches_the_ledger(lab, ledger_rows, tmp_path):
    import matplotlib.image

    base, better, worse, crash = ledger_rows
    with reading(lab) as h:
        progress = write_report(h, tmp_path)["progress"]
    png = tmp_path / "progress.png"
    assert png_size(png) == SIZE_PX == progress.size_px
    assert matplotlib.image.imread(png).shape[:2] == (SIZE_PX[1], SIZE_PX[0])

    assert "4 experiments, 2 kept" in progress.title and "1 crashed" in progress.title
    assert (progress.experiments, progress.kept, progress.failed, progress.rejected) == (4, 2, 1, 0)
    (series,) = progress.series
    assert series.branch == "autoresearch/r"
    # x = experiment number among the runs with a val_bpb; the crash is left out of the points
    assert series.kept == [(0, base.val_bpb, base.id), (1, better.val_bpb, better.id)]
    assert series.discarded == [(2, worse.val_bpb, worse.id)]
    assert crash.id not in {p[2] for p in series.kept + series.discarded}
    # running best: steps down at each keep and holds to the last experiment
    assert series.best == [(0, base.val_bpb), (1, better.val_bpb), (2, better.val_bpb)]
    assert series.labels == DESCRIPTIONS[:2]
    assert set(progress.legend) == {"discarded", "kept", "running best"}
    # y from best to baseline with a little margin
    lo, hi = progress.ylim
    span = base.val_bpb - better.val_bpb
    assert lo == pytest.approx(better.val_bpb - 0.15 * span) and hi == pytest.approx(base.val_bpb + 0.15 * span)


def _has_color(pixels, hex_color: str) -> bool:
    import numpy as np

    rgb = np.array([int(hex_color[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    return bool((np.abs(pixels[..., :3] - rgb).max(axis=-1) < 0.02).any())


def test_a_second_branch_gets_its_own_colour_and_series(lab, ledger_rows, tmp_path):
    import matplotlib.image

    copy = tmp_path / "lab"
    shutil.copytree(lab, copy)
    head = git(copy, "rev-parse", "HEAD")
    ledger = Ledger(copy)
    now = time.time()
    for status, bpb, frontier in (("keep", 2.5, None), ("discard", 2.6, 2.5), ("crash", None, 2.5),
                                  ("keep", 2.4, 2.5)):
        ledger.insert(Experiment(branch="autoresearch/other", parent=head, commit=head, status=status,
                                 description=f"other {status}", val_bpb=bpb, frontier_bpb=frontier,
                                 started_at=now, finished_at=now + 1))
    ledger.close()

    with reading(copy) as h:
        progress = write_report(h, tmp_path / "out")["progress"]
    assert "8 experiments, 4 kept" in progress.title and "2 crashed" in progress.title
    first, second = progress.series
    assert first.branch == "autoresearch/r" and second.branch == "autoresearch/other"
    assert first.color != second.color and {first.color, second.color} <= set(BRANCH_COLORS)
    assert [p[:2] for p in first.kept] == [(0, ledger_rows[0].val_bpb), (1, ledger_rows[1].val_bpb)]
    assert [p[:2] for p in second.kept] == [(0, 2.5), (2, 2.4)] and [p[:2] for p in second.discarded] == [(1, 2.6)]
    assert second.best == [(0, 2.5), (2, 2.4)]
    assert {"autoresearch/r: kept", "autoresearch/other: kept", "autoresearch/other: running best",
            "discarded"} <= set(progress.legend)
    assert progress.ylim[1] > 2.5 and progress.ylim[0] < ledger_rows[1].val_bpb
    pixels = matplotlib.image.imread(tmp_path / "out" / "progress.png")
    assert _has_color(pixels, first.color) and _has_color(pixels, second.color)


# -- report.html in a browser --------------------------------------------------------------------


def dump_dom(page: Path, query: str, profile: Path) -> str:
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--dump-dom", page.resolve().as_uri() + query],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "</html>" in proc.stdout, proc.stderr[-2000:]
    return proc.stdout


def row_ids(dom: str) -> list[int]:
    table = dom.split('id="experiments"', 1)[1].split("</table>", 1)[0]
    return [int(x) for x in re.findall(r'<tr class="\w+" data-id="(\d+)"', table)]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_html_in_headless_chromium(lab, ledger_rows, cli_report, tmp_path):
    page = cli_report / "report.html"
    source = page.read_text()
    # self-contained: no external script, stylesheet, image or font
    assert not re.search(r'(src|href)="(https?:)?//', source) and "<link" not in source
    assert "<script src" not in source

    dom = dump_dom(page, "", tmp_path / "chrome")
    assert row_ids(dom) == [r.id for r in ledger_rows]  # one row per experiment, in ledger order
    img = re.search(r'<img[^>]*id="progress"[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', dom)
    assert img and base64.b64decode(img.group(1)) == (cli_report / "progress.png").read_bytes()
    base, better = ledger_rows[:2]
    assert f"{base.val_bpb:.6f} → {better.val_bpb:.6f}" in dom  # baseline -> best in the summary
    # each kept experiment shows its diff against its parent, escaped
    kept_better = dom.split('id="kept-2"', 1)[1].split('class="kept"', 1)[0]
    assert "EMBEDDING_LR = 0.0006" in kept_better and "EMBEDDING_LR = 0.6" in kept_better
    assert "restore the learning rates" in kept_better

    # a click on a header sorts (the query string makes the same click): val_bpb descending, blanks last
    dom = dump_dom(page, "?sort=val_bpb&dir=desc", tmp_path / "chrome")
    measured = sorted((r for r in ledger_rows if r.val_bpb is not None), key=lambda r: -r.val_bpb)
    assert row_ids(dom) == [r.id for r in measured] + [ledger_rows[3].id]
    assert re.search(r'<th data-key="val_bpb"[^>]*data-dir="desc"', dom)
    dom = dump_dom(page, "?sort=description", tmp_path / "chrome")
    assert row_ids(dom) == [r.id for r in sorted(ledger_rows, key=lambda r: r.description.lower())]


# -- JSON ----------------------------------------------------------------------------------------


def cli_json(lab: Path, *args: str):
    proc = run_cli(*args, cwd=lab)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def test_status_show_lineage_json_match_the_ledger(lab, ledger_rows):
    base, better, worse, crash = ledger_rows
    status = cli_json(lab, "status", "--json")
    assert (status["experiments"], status["kept"], status["branch"]) == (4, 2, "autoresearch/r")
    assert status["frontier"] == better.commit == git(lab, "rev-parse", "HEAD")
    assert status["best_val_bpb"] == better.val_bpb
    assert [(r["id"], r["status"], r["commit"], r["val_bpb"]) for r in status["rows"]] == \
        [(r.id, r.status, r.commit, r.val_bpb) for r in ledger_rows]
    assert status["rows"][2]["delta"] == pytest.approx(worse.val_bpb - better.val_bpb)

    shown = cli_json(lab, "show", str(better.id), "--json")
    assert (shown["id"], shown["commit"], shown["parent"], shown["status"]) == \
        (better.id, better.commit, base.commit, "keep")
    assert shown["val_bpb"] == better.val_bpb and shown["delta"] == pytest.approx(better.val_bpb - base.val_bpb)
    assert "-EMBEDDING_LR = 0.0006" in shown["diff"] and "+EMBEDDING_LR = 0.6" in shown["diff"]
    assert "val_bpb" in shown["log_tail"] and shown["reason"] == better.reason

    by_commit = cli_json(lab, "show", crash.commit[:8], "--json")  # a commit prefix works too
    assert (by_commit["id"], by_commit["status"], by_commit["error_class"]) == (crash.id, "crash", "syntax")
    assert "def broken(:" in by_commit["diff"] and "SyntaxError" in by_commit["log_tail"]

    text = run_cli("show", worse.commit[:7], cwd=lab)
    assert text.returncode == 0 and "cripple again" in text.stdout and "discard" in text.stdout
    missing = run_cli("show", "999", cwd=lab)
    assert missing.returncode == 1 and "no experiment" in missing.stderr and "Traceback" not in missing.stderr

    line = cli_json(lab, "lineage", "--json")
    assert [s["id"] for s in line["steps"]] == [base.id, better.id]
    assert [s["commit"] for s in line["steps"]] == [base.commit, better.commit]
    assert git(lab, "rev-parse", f"{better.commit}~1") == base.commit  # it is the branch's history
    assert line["steps"][0]["delta"] is None
    assert line["steps"][1]["delta"] == pytest.approx(better.val_bpb - base.val_bpb)
    assert (line["baseline_bpb"], line["frontier_bpb"], line["frontier"]) == (base.val_bpb, better.val_bpb,
                                                                              better.commit)
    assert line["improvement_pct"] == pytest.approx(100 * (base.val_bpb - better.val_bpb) / base.val_bpb)
    text = run_cli("lineage", cwd=lab)
    assert text.returncode == 0 and better.commit[:7] in text.stdout and "restore the learning rates" in text.stdout


# -- MLflow --------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_mlflow_logs_one_run_per_experiment_once(lab, ledger_rows, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv(MLFLOW_ENV, raising=False)
    proc = run_cli("report", "--mlflow", "--out", str(lab / "report"), cwd=lab,
                   env={k: v for k, v in os.environ.items() if k != MLFLOW_ENV})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 run(s) added, 0 already logged" in proc.stdout
    with reading(lab) as h:
        again = log_mlflow(h)  # the default local store in .autoresearch/mlflow
    assert again["added"] == [] and again["skipped"] == [r.id for r in ledger_rows]
    assert git(lab, "status", "--porcelain", "--untracked-files=all") == ""

    client = MlflowClient(tracking_uri=again["uri"])
    runs = client.search_runs([again["experiment_id"]], max_results=100)
    assert sorted(int(r.data.tags[MLFLOW_ID_TAG]) for r in runs) == [r.id for r in ledger_rows]
    by_id = {int(r.data.tags[MLFLOW_ID_TAG]): r for r in runs}
    for exp in ledger_rows:
        run = by_id[exp.id]
        assert run.data.tags["status"] == exp.status and run.data.tags["commit"] == exp.commit
        assert run.data.params["description"] == exp.description and run.data.params["parent"] == exp.parent
        if exp.val_bpb is not None:
            assert run.data.metrics["val_bpb"] == pytest.approx(exp.val_bpb)
            assert run.data.metrics["memory_gb"] == pytest.approx(exp.memory_gb)
            assert run.data.metrics["training_seconds"] == pytest.approx(exp.training_seconds)
        else:
            assert "val_bpb" not in run.data.metrics
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert "train.py.diff" in artifacts and Path(exp.log_path).name in artifacts
    assert by_id[ledger_rows[3].id].info.status == "FAILED"


def test_mlflow_missing_is_a_clear_error(lab, ledger_rows, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from autoresearch.cli import app

    for name in ("mlflow", "mlflow.entities", "mlflow.tracking"):
        monkeypatch.setitem(sys.modules, name, None)  # `import mlflow` now raises ImportError
    with pytest.raises(MlflowUnavailable, match=r"autoresearch\[mlflow\]"), reading(lab) as h:
        log_mlflow(h)
    monkeypatch.chdir(lab)
    result = CliRunner().invoke(app, ["report", "--mlflow", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "pip install" in result.output
    assert (tmp_path / "report.html").exists()  # the report itself was still written
