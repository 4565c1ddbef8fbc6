"""The red team: every cheat in cheats.py goes through `autoresearch run` and must not be kept on a forged
number. Each ends `rejected` (the guard), `invalid` (an integrity rule) or recorded with its true metric.

Cheats that the sandbox blocks run twice: in the sandbox (blocked), and with `--sandbox off`, where the
tripwire must still catch them and put everything back. The workspace is a copy of one made per session,
with a 3 s budget (the cpu profile's time rules at that budget: a 10 s start-up allowance, a 5 s export
allowance, so the model is due 18 s after launch) and a baseline already kept. Cheats whose subject is not how
well the model learned (what the run can reach, what the evaluator accepts) are composed with `one_step`:
training stops after a step, so the run does not wait out its window, and the record still holds the true
metric of that (barely trained) model.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

import cheats
import cheats_sandbox
from conftest import git, rows, run_cli

from autoresearch import sandbox

pytestmark = pytest.mark.slow
needs_sandbox = pytest.mark.skipif(sandbox.probe() != "", reason=f"no sandbox here: {sandbox.probe()}")


@pytest.fixture
def lab(baselined) -> Path:
    """A copy of the suite's workspace with a 3 s budget and its baseline kept (conftest's `baselined`)."""
    return baselined


def attempt(lab: Path, cheat, *extra: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, dict, str]:
    """Apply the cheat to train.py, run it, return the CLI result, its ledger row and its log."""
    path = lab / "train.py"
    path.write_text(cheat(path.read_text()))
    done = run_cli("run", "-m", cheat.__name__, "--rule", "strict", *extra, cwd=lab, env=env)
    row = rows(lab)[-1]
    log = (lab / row["log_path"]).read_text(errors="replace") if row["log_path"] else ""
    return done, row, log


def assert_true_metric(row: dict, baseline: dict) -> None:
    """A real score of a real (tiny) model, from the harness: not the forged 0.001 / 0.0001."""
    assert row["status"] in ("keep", "discard"), row
    assert 0.5 < row["val_bpb"] < 10, row
    assert row["frontier_bpb"] == pytest.approx(baseline["val_bpb"]), "the bar was moved"


def compose(*changes):
    """Several cheats in one train.py (each leaves the others' anchors in place)."""
    def apply(text: str) -> str:
        for change in changes:
            text = change(text)
        return text

    apply.__name__ = "+".join(c.__name__ for c in changes)
    return apply


# API keys an agent backend or a task's grader needs, set for the harness: none may reach train.py
SECRETS = {name: f"redteam-secret-{i}" for i, name in enumerate(cheats_sandbox.SECRET_NAMES)}


def assert_no_secrets(log: str) -> None:
    """What cheats_sandbox.read_secrets printed: every credential of SECRETS, and any other, out of sight."""
    for name in SECRETS:
        assert f"CHEAT blocked (env {name}): not set" in log, log[-3000:]
    assert "CHEAT blocked (env): no key, token or secret in sight" in log, log[-3000:]
    assert "redteam-secret" not in log and "CHEAT: saw" not in log


def assert_nothing_outlived(lab: Path, row: dict, log: str) -> None:
    assert "CHEAT: started a detached process" in log
    run_dir = lab / "runs" / f"{row['id']:04d}"
    seen = sorted(run_dir.glob("alive-*"))
    assert seen, "the detached process never ran"
    time.sleep(1.5)
    assert sorted(run_dir.glob("alive-*")) == seen, "something is still writing after the run ended"


def assert_untouched_record(lab: Path, baseline: dict) -> None:
    all_rows = rows(lab)
    assert all_rows[0]["val_bpb"] == baseline["val_bpb"]
    assert not any(r["description"] == "forged" for r in all_rows)
    tsv = (lab / "results.tsv").read_text()
    assert "forged" not in tsv and "0.001000" not in tsv and tsv.startswith("commit\tval_bpb")


# -- what the harness never reads ------------------------------------------------------------------


def test_printed_numbers_and_in_process_patches_never_reach_the_record(lab):
    baseline = rows(lab)[0]
    done, row, log = attempt(lab, compose(cheats.fake_print, cheats.monkeypatch_harness, cheats.one_step))
    assert "val_bpb: 0.000100" in log and "CHEAT: patched the harness in this process" in log
    assert_true_metric(row, baseline)
    assert "0.000100" not in (lab / "results.tsv").read_text() and "0.000100" not in done.stdout


# -- the record, the frozen files, the held-out data, other processes ------------------------------


@pytest.fixture
def private_harness(tmp_path) -> tuple[dict, Path]:
    """A copy of the package that the CLI (and so train.py) imports instead of the checkout: a cheat that edits
    the installed evaluator edits the copy, so tests running beside this one never see a tampered harness."""
    import autoresearch

    site = tmp_path / "site"
    shutil.copytree(Path(autoresearch.__file__).parent, site / "autoresearch",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return {"PYTHONPATH": str(site)}, site / "autoresearch" / "harness" / "evaluate.py"


@needs_sandbox
def test_in_the_sandbox_the_record_harness_data_and_host_are_out_of_reach(lab, private_harness):
    env, source = private_harness
    original = source.read_bytes()
    baseline = rows(lab)[0]
    _, row, log = attempt(lab, compose(cheats.write_ledger, cheats.edit_harness, cheats.read_validation,
                                       cheats.detached_process, cheats.one_step), env=env)
    assert row["sandbox"] == "bwrap"
    for what in ("ledger", "results.tsv", "harness", "keep rule", "package", "settings", "val.bin", "test.bin",
                 "corpus", "training on val"):
        assert f"CHEAT blocked ({what})" in log, (what, log[-3000:])
    assert "CHEAT: read" not in log and "CHEAT: wrote" not in log and "CHEAT: edited" not in log
    assert source.read_bytes() == original
    assert_true_metric(row, baseline)
    assert_untouched_record(lab, baseline)
    assert_nothing_outlived(lab, row, log)


def test_outside_the_sandbox_tampering_is_invalid_and_undone(lab, private_harness):
    env, source = private_harness
    original = source.read_bytes()
    baseline = rows(lab)[0]
    settings = (lab / "autoresearch.toml").read_bytes()
    package = source.parent.parent
    originals = {p: p.read_bytes() for p in (package / "selection.py", package / "__init__.py")}
    done, row, log = attempt(lab, compose(cheats.write_ledger, cheats.edit_harness, cheats.one_step), "--sandbox", "off",
                             env=env)
    for what in ("wrote the ledger", "wrote results.tsv", "edited the harness", "edited the keep rule",
                 "hooked the package", "edited autoresearch.toml"):
        assert f"CHEAT: {what}" in log
    assert row["sandbox"] == "none"
    assert (row["status"], row["error_class"]) == ("invalid", "tamper"), row
    assert done.returncode == 6 and "results.tsv" in row["error_excerpt"] and str(source) in row["error_excerpt"]
    assert_untouched_record(lab, baseline)
    assert source.read_bytes() == original, "the harness was not put back"
    assert all(p.read_bytes() == b for p, b in originals.items()), "the package was not put back"
    assert str(package / "selection.py") in row["error_excerpt"]
    assert (lab / "autoresearch.toml").read_bytes() == settings
    evidence = lab / "runs" / f"{row['id']:04d}" / "tampered"
    assert (evidence / "results.tsv.tampered").read_text().endswith("forged\n")
    assert git(lab, "status", "--porcelain") == ""
    # the next experiment runs on the restored harness, with nothing to repair by hand
    (lab / "train.py").write_text(cheats.one_step(git(lab, "show", "HEAD:train.py")) + "\n")
    again = run_cli("run", "-m", "honest again", "--rule", "strict", "--sandbox", "off", cwd=lab, env=env)
    assert again.returncode == 0, again.stdout + again.stderr


def test_outside_the_sandbox_a_detached_process_is_killed_and_no_credential_is_in_sight(lab):
    """Without the sandbox, train.py still gets an allowlisted environment: the agents' keys stay with the
    parent (in the sandbox: test_redteam_sandbox.py); and what it starts dies with the run."""
    baseline = rows(lab)[0]
    _, row, log = attempt(lab, compose(cheats_sandbox.read_secrets, cheats.detached_process, cheats.one_step), "--sandbox", "off",
                          env=SECRETS)
    assert row["sandbox"] == "none"
    assert_no_secrets(log)
    assert_nothing_outlived(lab, row, log)
    assert_true_metric(row, baseline)


def test_a_new_file_imported_by_train_py_is_rejected(lab):
    (lab / "helper.py").write_text("print('helper code outside train.py')\n")
    done, row, _ = attempt(lab, cheats.import_helper)
    assert (row["status"], row["error_class"]) == ("rejected", "scope") and "helper.py" in row["error_excerpt"]
    assert done.returncode == 5 and row["commit"] == ""


def test_a_helper_hidden_in_an_ignored_folder_is_rejected(lab):
    (lab / "runs" / "helper.py").write_text("print('hidden where git does not look')\n")
    path = lab / "train.py"
    path.write_text(path.read_text().replace("import os\n", "import os, sys\nsys.path.insert(0, 'runs')\n", 1))
    done, row, _ = attempt(lab, cheats.import_helper)
    assert (row["status"], row["error_class"]) == ("rejected", "scope") and "runs/helper.py" in row["error_excerpt"]


def test_editing_the_settings_before_the_run_is_rejected(lab):
    settings = lab / "autoresearch.toml"
    settings.write_text(settings.read_text().replace("eval_tokens = 65536", "eval_tokens = 8192"))
    done, row, _ = attempt(lab, lambda text: text)
    assert (row["status"], row["error_class"]) == ("rejected", "scope") and "autoresearch.toml" in row["error_excerpt"]
    assert "eval_tokens = 8192" in settings.read_text(), "the user's edit is theirs: never reverted silently"


# -- the model ----------------------------------------------------------------------------------------


def test_removing_the_causal_mask_is_invalid(lab):
    done, row, _ = attempt(lab, compose(cheats.no_causal_mask, cheats.one_step))
    assert (row["status"], row["error_class"]) == ("invalid", "causality"), row
    assert row["val_bpb"] is None and done.returncode == 6


def test_perfect_logits_from_the_next_token_are_invalid(lab):
    _, row, _ = attempt(lab, compose(cheats.perfect_logits, cheats.one_step))
    assert (row["status"], row["error_class"]) == ("invalid", "causality"), row


def test_a_model_returning_its_own_loss_is_invalid(lab):
    _, row, _ = attempt(lab, compose(cheats.own_loss, cheats.one_step))
    assert (row["status"], row["error_class"]) == ("invalid", "shape"), row


# -- time --------------------------------------------------------------------------------------------


def stopped_at_the_deadline(lab: Path, row: dict) -> bool:
    """Stopped as `invalid` (budget) once the deadline passed with no model, within the stop's grace."""
    from autoresearch.harness.settings import Settings
    from autoresearch.procs import GRACE_SECONDS

    rules = Settings.load(lab).profile.time_rules
    return ((row["status"], row["error_class"]) == ("invalid", "budget") and row["val_bpb"] is None
            and rules.deadline <= row["train_wall_seconds"] < rules.deadline + GRACE_SECONDS + 2)


def test_ignoring_the_clock_is_stopped_and_invalid(lab):
    _, row, _ = attempt(lab, cheats.ignore_clock)
    assert stopped_at_the_deadline(lab, row), row


def test_slowing_the_clock_from_inside_is_stopped_and_invalid(lab):
    _, row, _ = attempt(lab, cheats.patch_clock)
    assert stopped_at_the_deadline(lab, row), row


def test_training_before_the_clock_past_the_deadline_is_stopped_and_invalid(lab):
    _, row, log = attempt(lab, cheats.train_before_clock)
    assert stopped_at_the_deadline(lab, row), row
    assert "CHEAT: trained" not in log


def test_training_on_in_a_thread_after_submit_and_exporting_again_is_invalid(lab):
    _, row, log = attempt(lab, cheats.train_after_submit)
    assert (row["status"], row["error_class"]) == ("invalid", "resubmitted"), row


def test_a_seed_change_alone_is_legal_and_judged_by_the_noise_rule(lab):
    path = lab / "train.py"
    path.write_text(cheats.seed_only(path.read_text()))
    done = run_cli("run", "-m", "seed only", "--rule", "noise", "--noise-runs", "1", cwd=lab)
    assert done.returncode == 0, done.stdout + done.stderr
    row = rows(lab)[-1]
    assert row["status"] in ("keep", "discard") and row["rule"] == "noise"
    assert row["reason"].startswith("noise:") and "sigma" in row["reason"], row["reason"]
    db = sqlite3.connect(lab / ".autoresearch" / "ledger.sqlite")
    kinds = [k for (k,) in db.execute("SELECT kind FROM runs ORDER BY id")]
    db.close()
    # the baseline's run, then the floor measured first, then the candidate (and its confirmation, if any)
    assert kinds[:3] == ["experiment", "noise", "experiment"] and set(kinds[3:]) <= {"confirm"}
