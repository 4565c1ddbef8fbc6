"""The README's commands, typed as a new user types them: the `autoresearch` console script, default flags,
only the budget shortened. Nothing here sets an option a user would not set.

- the quick start (init, prepare, python train.py, run -m baseline, status, report) runs in the user's own
  environment: no test setting at all, torch.compile included (by hand train.py compiles; under the harness,
  at this budget, it does not), on the CPUs the suite's other worker leaves (`users_share`);
- the experiment commands that follow, on a copy of the quick start's lab (an edit and `run -m`, `loop`,
  `status`, `show`, `lineage`, `report`; `noise` is tests/test_noise.py's), keep the suite's settings,
  TORCHDYNAMO_DISABLE and one torch thread per test worker (the harness's behaviour under test depends on
  neither), and every harness default: the noise rule, the sandbox, the Optuna agent, 4 noise runs, report/.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import rows

pytestmark = pytest.mark.slow

TEST_SETTINGS = ("TORCHDYNAMO_DISABLE", "OMP_NUM_THREADS")  # what conftest adds for the rest of the suite


def autoresearch(*args: str, cwd: Path, env: dict | None = None, timeout: float = 900, cpus=None) -> subprocess.CompletedProcess:
    """The console script a user runs (the one `pip install` put on PATH); `cpus`: the CPUs it may use."""
    exe = shutil.which("autoresearch")
    assert exe, "the autoresearch command is not on PATH: run the README's set-up command"
    return subprocess.run([exe, *args], cwd=cwd, env=env or dict(os.environ), capture_output=True, text=True,
                          timeout=timeout, preexec_fn=on(cpus))


def on(cpus):
    """preexec_fn: run on these CPUs only (None: wherever the system puts it)."""
    return None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))


def users_share() -> set[int]:
    """The CPUs a new user's commands get: all but one, which the suite's other worker trains on. On this
    2-core machine kind a user's run then picks one torch thread itself (from the CPUs it may use), as it would
    on an idle 1-core machine: two threads on a core that another process holds slow a step tenfold, and
    a run stopped for it would be the suite's doing, not the user's."""
    cpus = sorted(os.sched_getaffinity(0))
    return set(cpus[:-1]) if len(cpus) > 1 and os.environ.get("PYTEST_XDIST_WORKER") else set(cpus)


def user_env() -> dict:
    """The environment a user has: the suite's own torch settings removed (the cache stays isolated)."""
    return {k: v for k, v in os.environ.items() if k not in TEST_SETTINGS}


def new_user_env(home: Path) -> dict:
    """A new user's: no test setting and no AUTORESEARCH_CACHE, a home of their own (the data goes to the
    default place, ~/.cache/autoresearch, and the sandbox must still find it there)."""
    home.mkdir()
    env = {k: v for k, v in user_env().items() if k != "AUTORESEARCH_CACHE"}
    return {**env, "HOME": str(home)}


@pytest.fixture(scope="module")
def new_user(tmp_path_factory) -> dict:
    """The README's quick start as a new user types it, once per module: init, prepare, python train.py, run -m
    baseline. Each step's completed process, the lab and the user's environment."""
    tmp = tmp_path_factory.mktemp("new-user")
    env, lab, cpus = new_user_env(tmp / "home"), tmp / "lab", users_share()
    steps = {"env": env, "lab": lab, "home": tmp / "home", "cpus": cpus}
    steps["init"] = autoresearch("init", str(lab), "--profile", "cpu", "--budget", "3", cwd=tmp, env=env, cpus=cpus)
    assert steps["init"].returncode == 0, steps["init"].stderr
    steps["prepare"] = autoresearch("prepare", cwd=lab, env=env, cpus=cpus)
    steps["train"] = subprocess.run([sys.executable, "train.py"], cwd=lab, env=env, capture_output=True, text=True,
                                    timeout=900, preexec_fn=on(cpus))
    steps["run"] = autoresearch("run", "-m", "baseline", cwd=lab, env=env, cpus=cpus)
    return steps


def test_quick_start_with_default_flags(new_user):
    env, lab = new_user["env"], new_user["lab"]
    done = new_user["prepare"]
    assert done.returncode == 0, done.stderr
    for split in ("val", "test"):  # what is scored, per source
        line = next(l for l in done.stderr.splitlines() if l.strip().startswith(f"{split}:"))
        for source in ("devil", "milton", "shakespeare", "web_bible"):
            assert source in line, line

    trained = new_user["train"]
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    assert "\n---\n" in trained.stdout and "val_bpb:" in trained.stdout
    mfu = next(l for l in trained.stdout.splitlines() if l.startswith("mfu_percent:"))
    assert mfu.split(":", 1)[1].strip().startswith("unknown"), mfu  # no peak FLOPs known for this CPU

    done = new_user["run"]
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("keep") and "baseline: first experiment" in done.stdout
    (row,) = rows(lab)
    assert row["rule"] == "noise" and row["sandbox"] == "bwrap" and row["test_bpb"] is not None

    status = autoresearch("status", cwd=lab, env=env, cpus=new_user["cpus"])
    assert status.returncode == 0 and "1 kept" in status.stdout, status.stdout + status.stderr
    report = autoresearch("report", cwd=lab, env=env, cpus=new_user["cpus"])
    assert report.returncode == 0, report.stderr
    assert (lab / "report" / "progress.png").stat().st_size > 0
    assert (lab / "report" / "report.html").stat().st_size > 0
    assert (new_user["home"] / ".cache" / "autoresearch" / "prepared" / "cpu").is_dir()


def _edit(lab: Path, old: str, new: str) -> None:
    text = (lab / "train.py").read_text()
    assert old in text
    (lab / "train.py").write_text(text.replace(old, new, 1))


def test_experiments_with_default_flags_then_the_loop(new_user, cache_dir, tmp_path):
    # the quick start's lab with its baseline kept by the defaults, copied (the quick start's checks read the
    # original); from here on the suite's environment, whose cache holds the same prepared data
    base = new_user["run"]
    assert base.returncode == 0 and base.stdout.startswith("keep"), base.stdout + base.stderr
    lab = tmp_path / "lab"
    shutil.copytree(new_user["lab"], lab, symlinks=True)

    # $EDITOR train.py; autoresearch run -m "..." -- the noise floor is measured first (4 repeats of the
    # frontier). Meanwhile the user watches from another terminal, as the README invites.
    _edit(lab, "WARMDOWN_RATIO = ", "WARMDOWN_RATIO = 0.5 * ")
    exe = shutil.which("autoresearch")
    proc = subprocess.Popen([exe, "run", "-m", "halve the warmdown"], cwd=lab, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    watched = 0
    while proc.poll() is None:
        for command in (["status"], ["show", "1"], ["lineage"], ["report"], ["status", "--json"]):
            seen = autoresearch(*command, cwd=lab)
            assert seen.returncode == 0, (command, seen.stderr)
            watched += 1
        time.sleep(40)  # a user glancing now and then (each glance is a process competing with the training)
    out, err = proc.communicate()
    assert proc.returncode == 0, out + err
    assert watched >= 10
    assert "noise: no noise floor" in err and out.split()[0] in ("keep", "discard"), out + err
    second = rows(lab)[1]
    assert second["reason"].startswith("noise:") and "sigma" in second["reason"], second
    db = sqlite3.connect(lab / ".autoresearch" / "ledger.sqlite")
    kinds = [k for (k,) in db.execute("SELECT kind FROM runs ORDER BY id")]
    db.close()
    assert kinds[:6] == ["experiment", "noise", "noise", "noise", "noise", "experiment"], kinds

    # autoresearch loop: the offline Optuna agent, the noise rule, the sandbox; every decision recorded
    done = autoresearch("loop", "--max-experiments", "1", cwd=lab)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    r = rows(lab)
    assert len(r) == 3 and r[0]["status"] == "keep" and r[0]["description"] == "baseline"
    assert all(x["agent"] == "optuna" for x in r[2:])
    assert all(x["status"] != "invalid" for x in r), [(x["status"], x["error_excerpt"]) for x in r]
    decided = [x for x in r[1:] if x["status"] in ("keep", "discard")]
    assert decided and all(x["reason"].startswith("noise:") for x in decided)
    assert all(x["sandbox"] == "bwrap" for x in r)

    status = autoresearch("status", "--json", cwd=lab)
    summary = json.loads(status.stdout)
    assert summary["experiments"] == 3 and summary["noise_std"] > 0
    assert autoresearch("report", cwd=lab).returncode == 0 and (lab / "report" / "progress.png").exists()
    assert autoresearch("lineage", cwd=lab).returncode == 0
    assert autoresearch("show", "2", cwd=lab).returncode == 0  # `noise`: tests/test_noise.py
