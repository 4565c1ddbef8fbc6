"""The red team on time and on the record: every cheat in cheats_clock.py goes through `autoresearch run` (the
lab and its kept baseline come from test_redteam.py) and ends `invalid` (budget) or recorded with what it
earned: training outside the budget buys nothing, and nothing train.py prints becomes a harness figure.

The lab's budget is 3 s, so the cheats train 8 s where they should not: the issue's 60 s at a 10 s budget,
scaled.
"""

from __future__ import annotations

import os
import sys

import pytest

import cheats_clock as cheats
from conftest import rows, run_cli
from cheats import one_step
from test_redteam import attempt, compose, lab, stopped_at_the_deadline  # noqa: F401 - fixtures

from autoresearch.harness.settings import Settings

pytestmark = pytest.mark.slow

# How far below an honest run a cheat's val_bpb may land and still count as noise. Measured on a busy 2-core
# machine, one torch thread per run: three honest runs of the lab 2.64-2.78 (20-36 steps, as the load changed
# the step rate); 8 s of training before the clock 2.61 against the 2.64 of its baseline, where before the
# launch-fixed window it won by 0.33 (2.59 against 2.92-2.93).
NOISE = 0.15
# One torch thread per training run, for the runs that are compared: on a busy machine two threads can
# slow a step tenfold, and the comparison should see the cheat, not the load.
STEADY = {"OMP_NUM_THREADS": "1"}


def honest(text: str) -> str:
    return text


def test_training_before_the_clock_gains_nothing(lab):
    baseline = rows(lab)[0]
    _, reference, _ = attempt(lab, honest, env=STEADY)
    _, row, log = attempt(lab, cheats.train_before_clock_for(8), env=STEADY)
    assert reference["status"] in ("keep", "discard"), reference
    # What this train.py reaches honestly: the better of its two honest runs (the lab's baseline and this one).
    # One run alone can land far off when the machine is loaded while it trains (3.31 beside a cheat at 2.85,
    # under the whole suite on 2 cores), and the comparison would see the load, not the cheat.
    best = min(baseline["val_bpb"], reference["val_bpb"])
    if row["status"] == "invalid":  # its training before the clock ran into the deadline (a slow start-up
        assert stopped_at_the_deadline(lab, row), row  # under load): stopped there, its line possibly unflushed
    else:  # scored: its 8 s came out of the same launch-fixed window the honest run trained in
        assert "CHEAT: trained" in log and "before the clock" in log
        assert row["status"] in ("keep", "discard"), row
        assert row["val_bpb"] > best - NOISE, (row["val_bpb"], baseline["val_bpb"], reference["val_bpb"])


def test_writing_the_submit_marker_and_training_on_is_stopped_and_invalid(lab):
    _, row, log = attempt(lab, cheats.train_past_the_clock_for(8, mark_submitted=True))
    assert "CHEAT: wrote the submitted marker" in log
    assert stopped_at_the_deadline(lab, row), row
    assert "CHEAT: trained" not in log


def test_training_past_the_clock_beyond_the_export_allowance_is_stopped_and_invalid(lab):
    _, row, log = attempt(lab, cheats.train_past_the_clock_for(8))
    assert stopped_at_the_deadline(lab, row), row
    assert "CHEAT: trained" not in log


# -- the record: harness figures are measured, candidate figures are labelled -----------------------------


def test_a_forged_summary_is_recorded_as_reported_and_never_as_memory(lab):
    baseline = rows(lab)[0]
    _, row, log = attempt(lab, compose(cheats.forge_summary, one_step))  # what it prints, not what it learns
    assert "num_steps:        999999" in log and "peak_vram_mb:     1.0" in log
    assert row["status"] in ("keep", "discard") and 0.5 < row["val_bpb"] < 10, row
    # memory: the process tree as the parent measured it (about the baseline's), not the printed 1 MB
    assert row["memory_gb"] > 0.1 and abs(row["memory_gb"] - baseline["memory_gb"]) < 0.5, row
    # steps: only train.py knows them; stored as it reported them, and shown as such
    assert row["steps"] == 999999
    shown = run_cli("show", str(row["id"]), cwd=lab)
    assert shown.returncode == 0, shown.stderr
    assert "reported by train.py: steps 999999" in shown.stdout
    assert "memory_gb    %.3f (measured by the harness)" % row["memory_gb"] in shown.stdout


FAKE_NVIDIA_SMI = f"""#!{sys.executable}
# nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits, faked: 3072 MiB for every
# python process running train.py, 99999 MiB for a process outside any run, and a line it cannot read
import os
for pid in os.listdir("/proc"):
    try:
        argv = open(f"/proc/{{pid}}/cmdline", "rb").read().split(b"\\0")
    except OSError:
        continue
    if argv[-2:] == [b"train.py", b""] and b"python" in os.path.basename(argv[0]):
        print(f"{{pid}}, 3072")
print("1, 99999")
print("[N/A], [N/A]")
"""


def test_with_nvidia_smi_memory_is_the_gpu_memory_of_the_run_s_processes_only(lab, tmp_path):
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text(FAKE_NVIDIA_SMI)
    fake.chmod(0o755)
    env = {"PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}"}
    _, row, _ = attempt(lab, cheats.forge_summary, env=env)
    assert row["status"] in ("keep", "discard"), row
    assert row["memory_gb"] == pytest.approx(3072 / 1024), row


def test_the_time_rules_are_one_value_derived_from_the_profile(lab):
    rules = Settings.load(lab).profile.time_rules
    assert (rules.budget, rules.startup, rules.export) == (3.0, 10.0, 5.0)
    assert rules.training_ends == 13.0 and rules.deadline == 18.0
    assert rules.hard_timeout == rules.deadline + rules.exit_grace
