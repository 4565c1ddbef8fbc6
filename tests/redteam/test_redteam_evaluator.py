"""The evaluator's red team: every cheat in cheats_evaluator.py goes through `autoresearch run` (the lab and
its kept baseline come from test_redteam.py) and ends `invalid` with a named class, or recorded with its
true metric. The two cheats that plant files (a shadow package, a pickled weight) are also run straight
against the evaluator, with nothing else in the way, and their payloads must never run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

import cheats_evaluator as cheats
from conftest import rows
from test_evaluate import Bigram
from cheats import one_step
from test_redteam import assert_true_metric, attempt, compose, lab  # noqa: F401 - fixtures

from autoresearch.harness import evaluate
from autoresearch.harness.evaluate import EvalError, load_archive
from autoresearch.harness.protocol import run_evaluator
from autoresearch.harness.submission import export_model

pytestmark = pytest.mark.slow


def run_dir(lab: Path, row: dict) -> Path:
    return lab / "runs" / f"{row['id']:04d}"


# -- through `autoresearch run` ------------------------------------------------------------------------


def test_a_model_that_counts_its_calls_is_invalid(lab):
    _, row, log = attempt(lab, compose(cheats.count_calls, one_step))
    assert "CHEAT: the model counts its calls" in log
    assert (row["status"], row["error_class"]) == ("invalid", "graph"), row
    assert "stateless" in row["error_excerpt"] and row["val_bpb"] is None


def test_peeking_everywhere_but_the_old_probe_cuts_is_invalid(lab):
    _, row, log = attempt(lab, compose(cheats.peek_between_old_cuts, one_step))
    assert "CHEAT: the model peeks everywhere but the old probe's cuts" in log
    assert (row["status"], row["error_class"]) == ("invalid", "causality"), row


def test_a_blinding_logit_column_does_not_hide_a_peek(lab):
    _, row, log = attempt(lab, compose(cheats.peek_with_blinding_column, one_step))
    assert "CHEAT: the model peeks and adds a blinding column" in log
    assert (row["status"], row["error_class"]) == ("invalid", "causality"), row


def test_a_shadow_harness_in_the_run_folder_is_never_imported(lab):
    baseline = rows(lab)[0]
    _, row, log = attempt(lab, compose(cheats.shadow_harness, one_step))
    assert "CHEAT: planted a shadow harness in the run folder" in log, log[-3000:]
    assert (run_dir(lab, row) / "autoresearch").is_symlink()
    assert not (run_dir(lab, row) / cheats.SHADOW_MARKER).exists(), "the evaluator imported the shadow"
    assert_true_metric(row, baseline)


def test_a_pickled_weight_is_refused_unread(lab):
    _, row, log = attempt(lab, compose(cheats.pickled_weight, one_step))
    assert "CHEAT: submitted a model.pt2 with a pickled weight" in log, log[-3000:]
    assert (row["status"], row["error_class"]) == ("invalid", "archive"), row
    assert "pickle" in row["error_excerpt"]
    assert not (run_dir(lab, row) / cheats.PAYLOAD_MARKER).exists(), "the pickled payload ran"


# -- straight against the evaluator --------------------------------------------------------------------


class ScaledBigram(Bigram):
    """A bigram with one tiny weight: the one `poison` turns into a pickle."""

    def __init__(self, vocab: int):
        super().__init__(vocab)
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, idx):
        return super().forward(idx) * self.scale


def test_the_evaluator_does_not_import_a_package_from_its_run_folder(workspace, tmp_path):
    torch.manual_seed(0)
    program = export_model(Bigram(2048), workspace, tmp_path)
    honest = run_evaluator(program, workspace.root, tmp_path)
    marker = tmp_path / cheats.SHADOW_MARKER
    cheats.plant_shadow(tmp_path, marker)
    shadowed = run_evaluator(program, workspace.root, tmp_path)
    assert not marker.exists(), "the evaluator imported the shadow harness"
    assert "error" not in shadowed, shadowed
    assert shadowed["val_bpb"] == honest["val_bpb"] and shadowed["harness_verified"]


def test_a_pickled_weight_never_runs_in_the_evaluator(workspace, tmp_path, monkeypatch):
    program = export_model(ScaledBigram(2048), workspace, tmp_path)
    marker = tmp_path / cheats.PAYLOAD_MARKER
    cheats.poison(program, marker)
    with pytest.raises(EvalError) as info:
        load_archive(program)
    assert info.value.kind == "archive" and "pickle" in str(info.value)
    result = run_evaluator(program, workspace.root, tmp_path)
    assert result["error_class"] == "archive", result
    assert not marker.exists(), "the pickled payload ran"
    # the same file through torch's own loader runs the payload (which patches this process's harness:
    # monkeypatch puts the function back after the test)
    monkeypatch.setattr(evaluate, "bits_per_byte", evaluate.bits_per_byte)
    torch.export.load(str(program))
    assert marker.exists(), "the crafted archive no longer carries a working payload: update the cheat"
