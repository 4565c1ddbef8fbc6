"""The optuna agent: it finds train.py's hyperparameter block by its marker lines (and says so when they are
gone), starts at the frontier with local steps, moves to TPE around the frontier, never proposes what
cannot run, learns from crashes, and resumes from its study after a restart.

Nothing here trains: proposals are asked for and checked, never run; results come from a made-up score.
"""

from __future__ import annotations

from pathlib import Path

import math
import re

import optuna
import pytest

from autoresearch.agents import AgentError, AgentUnavailable, Context
from autoresearch.agents.optuna_search import (
    BEGIN, END, MAX_CHANGES, MODEL_AFTER, OptunaAgent, infeasible, memory_units, read_constants, single_steps,
    write_constants,
)
from autoresearch.git import git
from autoresearch.harness.profiles import get_profile
from autoresearch.ledger import Experiment
from autoresearch.workspace import init_workspace, render_train_py
from conftest import agent_context, run_cli

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
    return agent_context(root)


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
    assert proposal.description.startswith("optuna: ") and proposal.model == "optuna-local"
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


# ---------------------------------------------------------------------------------------------------
# The search: local steps, constraints, crashes, restarts

SEQ = get_profile("cpu").max_seq_len


def score(values: dict) -> float:
    """A made-up val_bpb: best at MATRIX_LR 0.08 and WARMDOWN_RATIO 0.7, everything else a little worse."""
    return (1.8 + 0.05 * math.log2(values["MATRIX_LR"] / 0.08) ** 2 + 0.2 * (values["WARMDOWN_RATIO"] - 0.7) ** 2
            + 0.001 * sum(1 for v in values.values() if isinstance(v, float)))


def baseline(root: Path, agent: OptunaAgent) -> float:
    value = score(read_constants((root / "train.py").read_text()))
    agent.observe(Experiment(id=1, status="keep", val_bpb=value, commit=git(root, "rev-parse", "HEAD")))
    return value


def trials(root: Path) -> list:
    storage = f"sqlite:///{root / '.autoresearch' / 'optuna.db'}"
    return optuna.load_study(study_name="autoresearch/t", storage=storage).get_trials(deepcopy=False)


def search(root: Path, agent: OptunaAgent, n: int, ctx: Context, best: float, first_id: int = 2, crash=None):
    """n proposals, each scored (or crashed by crash(values)) and told; the frontier follows the kept ones."""
    seen = []
    for i in range(n):
        proposal = agent.propose(ctx)
        values = read_constants(proposal.train_py)
        seen.append((proposal, values))
        error = crash(values) if crash else None
        value = None if error else score(values)
        status = "crash" if error else ("keep" if value < best else "discard")
        agent.observe(Experiment(id=first_id + i, status=status, val_bpb=value, error_class=error or ""))
        if status == "keep":
            best, ctx = value, Context(workspace=root, program="", train_py=proposal.train_py, history="",
                                       budget_seconds=60.0)
    return seen, ctx, best


def changed(before: str, after: str) -> dict:
    old, new = read_constants(before), read_constants(after)
    return {k: (old[k], new[k]) for k in old if old[k] != new[k]}


def test_local_steps_suit_each_kind_of_constant(workspace):
    agent = OptunaAgent(workspace, seed=0)
    baseline(workspace, agent)
    current = read_constants((workspace / "train.py").read_text())
    steps = single_steps(current, agent.space())
    by_name = {}
    for step in steps:
        (name, value), = step.items()
        by_name.setdefault(name, set()).add(value)
    assert by_name["MATRIX_LR"] == {0.056, 0.02857}                   # a rate: x/÷ 1.4
    assert by_name["DEVICE_BATCH_SIZE"] == {8, 32}                    # a power of two: its neighbours
    assert by_name["WARMDOWN_RATIO"] == {0.4, 0.6}                    # a fraction: ± 0.1
    assert by_name["DEPTH"] == {1, 3}                                 # an integer: ± 1
    assert by_name["WINDOW_PATTERN"] == {"SL", "SSL", "SSSL"}         # a pattern: the others


def test_the_search_starts_at_the_frontier_with_one_described_step(workspace):
    agent = OptunaAgent(workspace, seed=0)
    baseline(workspace, agent)
    assert [t.state.name for t in trials(workspace)] == ["COMPLETE"]   # the baseline: scored, not re-run
    ctx = context(workspace)
    proposal = agent.propose(ctx)
    diff = changed(ctx.train_py, proposal.train_py)
    assert 1 <= len(diff) <= 2 and proposal.model == "optuna-local"
    name, (old, new) = sorted(diff.items())[0]
    assert re.match(rf"optuna: {name} \S+ -> \S+( \([x/+-][\d.]+\))?.*; local step from the frontier$",
                    proposal.description), proposal.description
    assert infeasible({**read_constants(ctx.train_py), **read_constants(proposal.train_py)}, SEQ) is None


def test_the_description_names_the_step_exactly(workspace):
    agent = OptunaAgent(workspace, seed=0)
    baseline(workspace, agent)
    ctx = context(workspace)
    for _ in range(30):   # until a proposal moves MATRIX_LR alone
        proposal = agent.propose(ctx)
        agent.observe(Experiment(id=9, status="discard", val_bpb=9.0))
        if set(changed(ctx.train_py, proposal.train_py)) == {"MATRIX_LR"}:
            break
    assert proposal.description in ("optuna: MATRIX_LR 0.04 -> 0.056 (x1.4); local step from the frontier",
                                    "optuna: MATRIX_LR 0.04 -> 0.02857 (/1.4); local step from the frontier")


def test_a_campaign_stays_local_then_uses_tpe_and_finds_the_better_values(workspace):
    agent = OptunaAgent(workspace, seed=1)
    best = baseline(workspace, agent)
    seen, ctx, best_after = search(workspace, agent, 40, context(workspace), best)
    keys = [tuple(sorted(v.items())) for _, v in seen]
    assert len(set(keys)) == len(keys)                                     # nothing proposed twice
    for i, (proposal, values) in enumerate(seen):
        assert infeasible(values, SEQ) is None, proposal.description
        assert proposal.description.startswith("optuna: ")
        if i < MODEL_AFTER - 1:
            assert proposal.model == "optuna-local"
    assert "optuna-tpe" in {p.model for p, _ in seen[MODEL_AFTER:]}          # TPE takes over with enough results
    assert all(len(p.extra["changes"]) <= MAX_CHANGES for p, _ in seen)      # never the whole block at once
    assert best_after < best - 0.01                                          # the made-up optimum is found nearby
    assert len(trials(workspace)) == 41


def test_a_proposal_that_would_break_a_shape_rule_is_never_made():
    assert infeasible({"DEVICE_BATCH_SIZE": 32, "TOTAL_BATCH_SIZE": 2**12}, SEQ)   # 32 x 256 does not divide 4096
    assert infeasible({"DEVICE_BATCH_SIZE": 16, "TOTAL_BATCH_SIZE": 2**13}, SEQ) is None
    assert infeasible({"HEAD_DIM": 63}, SEQ) and infeasible({"WINDOW_PATTERN": "SXL"}, SEQ)
    assert infeasible({"WARMUP_RATIO": 0.6, "WARMDOWN_RATIO": 0.5}, SEQ)
    assert infeasible({"DEPTH": 0}, SEQ)


def test_an_out_of_memory_crash_bounds_every_later_proposal(workspace):
    agent = OptunaAgent(workspace, seed=2)
    best = baseline(workspace, agent)
    frontier = read_constants((workspace / "train.py").read_text())
    limit = memory_units(frontier, SEQ)

    def oom(values):  # anything larger than the frontier runs out of memory
        return "oom" if memory_units(values, SEQ) > limit else None

    seen, _, _ = search(workspace, agent, 30, context(workspace), best, crash=oom)
    crashed = [i for i, (_, v) in enumerate(seen) if oom(v)]
    assert crashed, "the search never tried a larger model"
    first = memory_units(seen[crashed[0]][1], SEQ)
    assert all(memory_units(v, SEQ) < first for _, v in seen[crashed[0] + 1:])  # never as large again
    failed = [t for t in trials(workspace) if t.state.name == "FAIL"]
    assert failed and all(t.user_attrs["error_class"] == "oom" for t in failed)   # recorded as failures


def test_the_search_resumes_from_its_study_after_a_restart(workspace):
    first = OptunaAgent(workspace, seed=3)
    best = baseline(workspace, first)
    seen, ctx, best = search(workspace, first, 5, context(workspace), best)
    again = OptunaAgent(workspace, seed=3)                                  # a new process: only the files remain
    assert len(again.results()) == 6
    more, _, _ = search(workspace, again, 5, ctx, best, first_id=7)
    keys = [tuple(sorted(v.items())) for _, v in seen + more]
    assert len(set(keys)) == len(keys)                                      # it remembers what was tried

    pending = again.propose(ctx)                                            # killed before the result came
    after = OptunaAgent(workspace, seed=3)
    retry = after.propose(ctx)
    states = [(t.state.name, t.user_attrs.get("error_class")) for t in trials(workspace)]
    assert states[-1] == ("FAIL", "interrupted")                            # told, but not held against it
    assert len(states) == 12 and retry.train_py == pending.train_py         # so the same step is tried again
