"""The optuna agent finds train.py's hyperparameter block by its marker lines, and says so when they are gone.

Nothing here trains: proposals are asked for and checked, never run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from autoresearch.agents import AgentError, AgentUnavailable, Context
from autoresearch.agents.optuna_search import BEGIN, END, OptunaAgent, read_constants, write_constants
from autoresearch.harness.profiles import get_profile
from autoresearch.workspace import init_workspace, render_train_py
from conftest import run_cli

TEMPLATE_CONSTANTS = {
    "ASPECT_RATIO": 64, "HEAD_DIM": 128, "WINDOW_PATTERN": "SSSL", "TOTAL_BATCH_SIZE": 2**19, "EMBEDDING_LR": 0.6,
    "UNEMBEDDING_LR": 0.004, "MATRIX_LR": 0.04, "SCALAR_LR": 0.5, "WEIGHT_DECAY": 0.2, "WARMUP_RATIO": 0.0,
    "WARMDOWN_RATIO": 0.5, "FINAL_LR_FRAC": 0.0, "DEPTH": 8, "DEVICE_BATCH_SIZE": 128,
}


@pytest.fixture
def workspace(tmp_path) -> Path:
    root = tmp_path / "ws"
    init_workspace(root, "cpu", tag="t")
    return root


def context(root: Path) -> Context:
    return Context(workspace=root, program=(root / "program.md").read_text(), train_py=(root / "train.py").read_text(),
                   history="", budget_seconds=60.0)


def without(root: Path, line: str) -> None:
    train = root / "train.py"
    text = train.read_text()
    assert text.count(line + "\n") == 1
    train.write_text(text.replace(line + "\n", ""))


def test_the_template_documents_the_markers_and_its_constants_lie_between_them():
    text = render_train_py(get_profile("h100"))
    lines = text.splitlines()
    begin = lines.index(BEGIN)
    assert lines.index(END) > begin
    assert "optuna" in lines[begin - 1] and "error" in lines[begin - 1]   # the one-line comment above them
    assert read_constants(text) == TEMPLATE_CONSTANTS                     # the template's values, unchanged
    cpu = read_constants(render_train_py(get_profile("cpu")))
    assert (cpu["DEPTH"], cpu["DEVICE_BATCH_SIZE"], cpu["TOTAL_BATCH_SIZE"]) == (2, 16, 2**12)


def test_write_constants_writes_inside_the_block_only():
    source = f"X = 1\n{BEGIN}\nDEPTH = 8   # layers\nLR = 0.04\n{END}\nDEPTH = 8\n"
    assert write_constants(source, {"DEPTH": 4, "LR": 0.02}) == (
        f"X = 1\n{BEGIN}\nDEPTH = 4   # layers\nLR = 0.02\n{END}\nDEPTH = 8\n")
    assert read_constants(source) == {"DEPTH": 8, "LR": 0.04}


def test_a_proposal_changes_the_block_and_keeps_the_markers(workspace):
    agent = OptunaAgent(workspace, seed=0)
    agent.check()
    ctx = context(workspace)
    proposal = agent.propose(ctx)
    assert proposal.description.startswith("optuna: ") and proposal.model == "optuna-tpe"
    assert BEGIN in proposal.train_py and END in proposal.train_py
    before, after = ctx.train_py.split(BEGIN), proposal.train_py.split(BEGIN)
    assert before[0] == after[0] and before[1].split(END)[1] == after[1].split(END)[1]   # outside: untouched
    assert (workspace / ".autoresearch" / "optuna.db").exists()


@pytest.mark.parametrize("removed", [BEGIN, END])
def test_a_train_py_without_a_marker_is_a_clear_error(workspace, removed):
    without(workspace, removed)
    with pytest.raises(AgentUnavailable, match=removed):           # the loop stops before it starts
        OptunaAgent(workspace).check()
    with pytest.raises(AgentError, match=removed) as info:          # a frontier that lost it: no proposal
        OptunaAgent(workspace).propose(context(workspace))
    assert "optuna agent" in str(info.value) and "\n" not in str(info.value)


def test_a_block_with_nothing_to_read_is_a_clear_error(workspace):
    train = workspace / "train.py"
    text = train.read_text()
    start, end = text.index(BEGIN) + len(BEGIN) + 1, text.index(END)
    train.write_text(text[:start] + "# all constants moved elsewhere\n" + text[end:])
    with pytest.raises(AgentUnavailable, match="no constant the optuna agent can read"):
        OptunaAgent(workspace).check()
    train.write_text(text[:start] + "SEED_NOTE = (1, 2)\nSEED = 7\n" + text[end:])   # readable, nothing to tune
    with pytest.raises(AgentUnavailable, match="no constant the optuna agent can tune"):
        OptunaAgent(workspace).check()


def test_the_loop_refuses_to_start_with_one_line_when_a_marker_is_gone(workspace, tmp_path):
    without(workspace, BEGIN)
    proc = run_cli("loop", "--agent", "optuna", "--max-experiments", "1", cwd=workspace,
                   env={"AUTORESEARCH_CACHE": str(tmp_path / "empty-cache"), "AUTORESEARCH_WORKSPACE": str(workspace)})
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert BEGIN in proc.stderr and "Traceback" not in proc.stderr
    assert not (workspace / "runs").exists()   # nothing ran
