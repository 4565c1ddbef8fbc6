"""The frozen metric: bits per byte by hand, the causality probe, the op allowlist, state, the archive read as
data, the isolated process and its harness check."""

from __future__ import annotations

import json
import math
import os
import secrets
import sys
import zipfile

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from autoresearch.harness import protocol
from autoresearch.harness.evaluate import (EvalError, bits_per_byte, check_graph, check_stateless, evaluate_program,
                                           load_archive, load_program, main, nats_and_bytes, plan_probe)
from autoresearch.harness.submission import SubmissionError, export_model, run_evaluator


def test_bits_per_byte_of_known_logits_matches_hand_computation():
    vocab = 8
    token_bytes = torch.tensor([1, 2, 3, 1, 1, 4, 0, 0])  # ids 6, 7 are special: no bytes
    targets = torch.tensor([[0, 1, 5, 6], [2, 7, 3, 3]])
    logits = torch.zeros(2, 4, vocab)  # uniform: every target costs ln(8) nats
    nats, nbytes = nats_and_bytes(logits, targets, token_bytes)
    text_targets = 6  # 0, 1, 5, 2, 3, 3 (6 and 7 excluded)
    assert nats == pytest.approx(text_targets * math.log(8), rel=1e-6)
    assert nbytes == 1 + 2 + 4 + 3 + 1 + 1
    assert bits_per_byte(nats, nbytes) == pytest.approx(6 * 3 / 12)  # log2(8) = 3 bits per token

    # a confident, correct model: target logit 100, others 0 -> ~0 nats
    sharp = torch.full((2, 4, vocab), 0.0)
    sharp.scatter_(2, targets.unsqueeze(-1), 100.0)
    assert nats_and_bytes(sharp, targets, token_bytes)[0] == pytest.approx(0.0, abs=1e-30)


def test_extra_logit_columns_beyond_vocab_are_ignored():
    token_bytes = torch.tensor([1, 1, 1, 1])
    targets = torch.tensor([[0, 1]])
    padded = torch.zeros(1, 2, 6)
    padded[..., 4:] = -1e9  # padded vocab columns, as models with rounded-up vocab have
    assert nats_and_bytes(padded, targets, token_bytes)[0] == pytest.approx(2 * math.log(4))


class Bigram(nn.Module):
    def __init__(self, vocab: int, leak: bool = False):
        super().__init__()
        self.table = nn.Embedding(vocab, vocab)
        self.leak = leak

    def forward(self, idx):
        logits = self.table(idx)
        if self.leak:  # peeks at the next token: what a model without a causal mask does
            logits = logits + 5.0 * self.table(torch.roll(idx, -1, dims=1))
        return logits


def _export_and_score(model, workspace, tmp_path):
    program = export_model(model, workspace, tmp_path)
    return run_evaluator(program, workspace.root, tmp_path)


def test_causal_model_is_scored_in_a_fresh_process(workspace, tmp_path):
    torch.manual_seed(0)
    model = Bigram(2048)
    result = _export_and_score(model, workspace, tmp_path)
    assert "error" not in result, result
    # a random bigram table is near uniform: ~log2(2048)=11 bits/token over ~3 bytes/token
    assert 2.5 < result["val_bpb"] < 6.0
    assert result["eval_tokens"] == 65536 and result["causality_leak"] < 1e-6
    assert result["harness_verified"] and result["probe_rows"] >= workspace.profile.max_seq_len - 1

    with torch.no_grad():  # a bigram fitted on nothing but "always predict BOS" is worse
        model.table.weight.zero_()
        model.table.weight[:, 2044] = 50.0
    worse = _export_and_score(model, workspace, tmp_path)
    assert worse["val_bpb"] > result["val_bpb"]


def test_causality_probe_rejects_a_model_that_sees_the_future(workspace, tmp_path):
    result = _export_and_score(Bigram(2048, leak=True), workspace, tmp_path)
    assert result["error_class"] == "causality"
    assert "future" in result["error"]


def test_wrong_output_shape_is_a_clear_error(workspace, tmp_path):
    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(2048, 2048)

        def forward(self, idx):
            return self.emb(idx).mean(dim=1)  # (B, V): not per-position logits

    result = _export_and_score(Pooled(), workspace, tmp_path)
    assert result["error_class"] == "shape", result


def test_unexportable_model_names_the_cause(workspace, tmp_path):
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(2048, 2048)

        def forward(self, idx):
            if idx.sum() > 0:  # Python control flow on data cannot be exported
                return self.emb(idx)
            return self.emb(idx) * 2

    with pytest.raises(SubmissionError) as info:
        export_model(DataDependent(), workspace, tmp_path)
    assert info.value.kind == "export"


def test_op_allowlist_refuses_custom_ops():
    @torch.library.custom_op("artest::peek", mutates_args=())
    def peek(x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @peek.register_fake
    def _(x):
        return torch.empty_like(x)

    class Custom(nn.Module):
        def forward(self, x):
            return peek(x) + 1

    program = torch.export.export(Custom(), (torch.zeros(2, 3),))
    with pytest.raises(EvalError) as info:
        check_graph(program)
    assert info.value.kind == "graph" and "artest" in str(info.value)
    ok = torch.export.export(nn.Linear(3, 3), (torch.zeros(2, 3),))
    assert any("addmm" in op or "linear" in op for op in check_graph(ok))


# -- the causality probe: every position, the harness's own log-probabilities, real text ----------------


class PeekAt(nn.Module):
    """A causal bigram that adds +30 to the next token's logit at the given positions only, and may append
    a logit column of 1e9 beyond the vocabulary (which blinded a probe of relative logit changes)."""

    def __init__(self, vocab: int, T: int, positions, blind: bool = False):
        super().__init__()
        self.table = nn.Embedding(vocab, vocab)
        mask = torch.zeros(T)
        mask[list(positions)] = 1.0
        self.register_buffer("mask", mask.view(1, T, 1), persistent=False)
        self.blind = blind

    def forward(self, idx):
        logits = self.table(idx) + 30.0 * self.mask * F.one_hot(torch.roll(idx, -1, dims=1), self.table.num_embeddings)
        if self.blind:
            logits = torch.cat([logits, torch.full_like(logits[..., :1], 1e9)], dim=-1)
        return logits


def _score(model, workspace, tmp_path) -> dict:
    return evaluate_program(export_model(model, workspace, tmp_path), workspace)


def test_the_probe_cuts_every_position_and_continues_with_other_real_rows():
    rng = np.random.default_rng(0)
    B, T, steps = 4, 10, 3
    batches = [rng.integers(0, 50_000, size=(B, T + 1)) for _ in range(steps)]
    slots = plan_probe(batches, secrets.SystemRandom())
    assert len(slots) == math.ceil((T - 1) / B)
    cuts = sorted(c for slot in slots for c in slot.cuts)
    assert set(range(T - 1)) <= set(cuts) and max(cuts) <= T - 2
    rows = [tuple(row[:-1]) for batch in batches for row in batch]
    for slot in slots:
        for r, c in enumerate(slot.cuts):
            own = batches[slot.batch][r, :-1]
            assert (slot.inputs[r, :c + 1] == own[:c + 1]).all()
            assert slot.inputs[r, c + 1] != own[c + 1]  # random ids: the donor differs right after the cut
            donors = [row for row in rows if row[c + 1:] == tuple(slot.inputs[r, c + 1:])]
            assert donors and tuple(own) not in donors, "the future is another scored row's text"
    assert [list(s.cuts) for s in plan_probe(batches, secrets.SystemRandom())] != [list(s.cuts) for s in slots]


def test_a_peek_at_any_single_position_is_caught(workspace, tmp_path):
    T = workspace.profile.max_seq_len
    position = secrets.randbelow(T - 1)
    with pytest.raises(EvalError) as info:
        _score(PeekAt(2048, T, [position]), workspace, tmp_path)
    assert info.value.kind == "causality" and f"position {position} " in str(info.value)


def test_logit_columns_beyond_the_vocabulary_neither_count_nor_blind_the_probe(workspace, tmp_path):
    T = workspace.profile.max_seq_len
    torch.manual_seed(0)
    honest = PeekAt(2048, T, [])
    plain = _score(honest, workspace, tmp_path)
    honest.blind = True
    assert _score(honest, workspace, tmp_path)["val_bpb"] == plain["val_bpb"]
    with pytest.raises(EvalError) as info:
        _score(PeekAt(2048, T, range(T), blind=True), workspace, tmp_path)
    assert info.value.kind == "causality"


# -- the program: stateless, deterministic --------------------------------------------------------------


class CountCalls(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls.add_(1)
        return self.lin(x) * self.calls


def test_a_program_that_mutates_a_buffer_is_refused():
    program = torch.export.export(CountCalls(), (torch.zeros(2, 4),))
    with pytest.raises(EvalError) as info:
        check_stateless(program)
    assert info.value.kind == "graph" and "calls" in str(info.value) and "stateless" in str(info.value)


def test_an_in_place_write_to_a_parameter_or_a_view_of_it_is_refused():
    for view in (False, True):
        program = torch.export.export(nn.Linear(4, 4), (torch.zeros(2, 4),))
        graph = program.graph_module.graph
        weight = next(n for n in graph.nodes if n.op == "placeholder")
        with graph.inserting_after(weight):
            target = graph.call_function(torch.ops.aten.view.default, (weight, [16])) if view else weight
        with graph.inserting_after(target):
            graph.call_function(torch.ops.aten.add_.Tensor, (target, 1.0))
        check_graph(program)  # every op is ATen: the state check is what refuses it
        with pytest.raises(EvalError) as info:
            check_stateless(program)
        assert info.value.kind == "graph" and "writes to" in str(info.value)
    check_stateless(torch.export.export(nn.Linear(4, 4), (torch.zeros(2, 4),)))  # untouched: fine


def test_random_ops_are_refused_but_attention_without_dropout_is_allowed():
    class Noisy(nn.Module):
        def forward(self, x):
            return x + torch.rand_like(x)

    class Attention(nn.Module):
        def forward(self, x):
            return F.scaled_dot_product_attention(x, x, x, is_causal=True)

    with pytest.raises(EvalError) as info:
        check_graph(torch.export.export(Noisy(), (torch.zeros(2, 4),)))
    assert info.value.kind == "graph" and "random" in str(info.value)
    assert any("scaled_dot_product" in op for op in check_graph(torch.export.export(Attention(), (torch.zeros(1, 2, 3, 4),))))


# -- the archive: data, never code ------------------------------------------------------------------------


def _rewrite(path, edit) -> None:
    """Apply `edit(files)` to the archive's files (names inside its root folder) and write it back."""
    with zipfile.ZipFile(path) as src:
        root = src.namelist()[0].split("/")[0]
        files = {info.filename.split("/", 1)[1]: src.read(info) for info in src.infolist()}
    edit(files)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        for name, data in files.items():
            out.writestr(f"{root}/{name}", data)


def _edit_json(name, change):
    def edit(files):
        obj = json.loads(files[name])
        change(obj)
        files[name] = json.dumps(obj).encode()
    return edit


def _first_weight(config):
    return next(iter(config["config"].values()))


ARCHIVE_ATTACKS = {
    "pickled weight": _edit_json("data/weights/model_weights_config.json",
                                 lambda c: _first_weight(c).update(use_pickle=True)),
    "custom object": _edit_json("data/weights/model_weights_config.json",
                                lambda c: _first_weight(c).update(path_name="custom_obj_0")),
    "unexpected file": lambda files: files.update({"extra/run_me.py": b"print('hi')"}),
    "compiled kernel": lambda files: files.update({"data/aotinductor/model/model.so": b"ELF"}),
    "guard code": _edit_json("models/model.json", lambda m: m.update(guards_code=["__import__('os')"])),
    "symbolic size": _edit_json("models/model.json", lambda m: next(iter(
        m["graph_module"]["graph"]["tensor_values"].values()))["sizes"].__setitem__(0, {"as_expr": {"expr": "1"}})),
    "quoted name": _edit_json("models/model.json", lambda m: m["graph_module"]["signature"]["input_specs"][0]
                              ["parameter"].update(parameter_name='w").__class__("')),
    "custom op": _edit_json("models/model.json", lambda m: m["graph_module"]["graph"]["nodes"][0]
                            .update(target="torch.ops.artest.peek.default")),
}


@pytest.mark.parametrize("attack", sorted(ARCHIVE_ATTACKS))
def test_an_archive_that_is_not_plain_data_is_refused(attack, tmp_path):
    torch.manual_seed(0)
    program = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(nn.Linear(4, 4), (torch.zeros(2, 4),)), str(program))
    _rewrite(program, ARCHIVE_ATTACKS[attack])
    with pytest.raises(EvalError) as info:
        load_archive(program)
    assert info.value.kind == "archive", (attack, info.value)


def test_an_honest_archive_loads_without_its_pickled_sample_inputs(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(4, 4)
    program = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(2, 4),)), str(program))
    _rewrite(program, lambda files: files.update({"data/sample_inputs/model.pt": b"not a pickle"}))
    module, ops = load_program(load_archive(program), "cpu")
    x = torch.randn(2, 4)
    assert torch.equal(module(x), model(x)) and ops
    with zipfile.ZipFile(program) as z:  # a compressed copy of the same files is refused
        files = {i.filename: z.read(i) for i in z.infolist()}
    with zipfile.ZipFile(program, "w", zipfile.ZIP_DEFLATED) as out:
        for name, data in files.items():
            out.writestr(name, data)
    with pytest.raises(EvalError, match="compressed"):
        load_archive(program)


# -- the process: isolated, on the fingerprinted harness ------------------------------------------------


def test_the_evaluator_environment_is_an_allowlist(monkeypatch, tmp_path):
    for name, value in {"PYTHONPATH": "/shadow", "LD_PRELOAD": "/evil.so", "TORCH_LOGS": "+all",
                        "AUTORESEARCH_TEST_PAUSE": "evaluating", "LC_ALL": "C.UTF-8", "OMP_NUM_THREADS": "1"}.items():
        monkeypatch.setenv(name, value)
    env = protocol.evaluator_env(tmp_path, {"AUTORESEARCH_OWNER": "/lab"})
    assert set(env) <= {*protocol.EVAL_ENV_KEEP, "LC_ALL", "HOME", "TMPDIR", "AUTORESEARCH_CACHE", "AUTORESEARCH_OWNER"}
    assert env["HOME"] == env["TMPDIR"] == str(tmp_path) and env["LC_ALL"] == "C.UTF-8" and env["OMP_NUM_THREADS"] == "1"
    cmd = protocol.evaluator_command(tmp_path / "model.pt2", tmp_path, tmp_path / "out.json", "val")
    assert cmd[1] == "-I" and cmd[cmd.index("--expect-fingerprint") + 1] == protocol.harness_fingerprint()


def test_the_evaluator_process_gets_the_allowlist_and_the_harness_s_own_settings(monkeypatch, tmp_path):
    """What the evaluator's process really sees: the allowlist, the caller's extra, and the settings the harness
    adds itself (huge pages for large tensors), whatever the user's shell says about them."""
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")
    monkeypatch.setenv("LD_PRELOAD", "/evil.so")
    dump = "import json, os, sys; open(sys.argv[1], 'w').write(json.dumps(dict(os.environ)))"

    def wrap(cmd, env):   # in the evaluator's place: a process that writes down its environment as the result
        return [sys.executable, "-c", dump, str(tmp_path / "eval-val.json")]

    seen = protocol.run_evaluator(tmp_path / "model.pt2", tmp_path, tmp_path, env={"AUTORESEARCH_OWNER": "/lab"},
                                  wrap=wrap)
    assert seen["THP_MEM_ALLOC_ENABLE"] == "1" and seen["AUTORESEARCH_OWNER"] == "/lab"
    assert "LD_PRELOAD" not in seen and seen["HOME"] == seen["TMPDIR"] != str(tmp_path)


def test_the_test_split_scored_ahead_is_what_a_fresh_process_scores(workspace, tmp_path):
    """run_evaluator_ahead returns the val result once it is written; the same process goes on to the test
    split, and its score is the one a fresh evaluator gives (the score is deterministic; the probe's draws are
    fresh, and find nothing in a causal model either way)."""
    torch.manual_seed(0)
    program = export_model(Bigram(2048), workspace, tmp_path)
    val, ahead = protocol.run_evaluator_ahead(program, workspace.root, tmp_path, timeout=300)
    assert "error" not in val and val["split"] == "val" and ahead is not None
    test = ahead.result(timeout=300)
    assert test["split"] == "test" and test["harness_verified"] and test["causality_leak"] < 1e-6
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    alone = protocol.run_evaluator(program, workspace.root, fresh, split="test")
    assert test["test_bpb"] == alone["test_bpb"] and test["eval_tokens"] == alone["eval_tokens"] == 65536
    assert json.loads((tmp_path / "eval-test.json").read_text())["test_bpb"] == test["test_bpb"]


def test_a_cancelled_test_split_leaves_no_process_and_no_file(tmp_path):
    """In the evaluator's place, a process that writes its val result, starts writing a test result, and
    would run for ever: cancel() kills it and removes what it wrote; a failed val leaves nothing to cancel."""
    pid_file = tmp_path / "pid"
    script = ("import json, os, sys, time; d = sys.argv[1]; open(os.path.join(d, 'pid'), 'w').write(str(os.getpid()));"
              "open(os.path.join(d, 'eval-test.json.tmp'), 'w').write('{');"
              "open(os.path.join(d, 'eval-val.json'), 'w').write(json.dumps({'val_bpb': 1.5, 'split': 'val'}));"
              "time.sleep(600)")

    def wrap(cmd, env):
        return [sys.executable, "-c", script, str(tmp_path)]

    val, ahead = protocol.run_evaluator_ahead(tmp_path / "model.pt2", tmp_path, tmp_path, timeout=60, wrap=wrap)
    assert val == {"val_bpb": 1.5, "split": "val"} and ahead is not None
    pid = int(pid_file.read_text())
    ahead.cancel()
    assert ahead.proc.poll() is not None and not (tmp_path / "eval-test.json.tmp").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)

    def fails(cmd, env):
        return [sys.executable, "-c", "import sys; print('no model', file=sys.stderr); sys.exit(1)"]

    val, ahead = protocol.run_evaluator_ahead(tmp_path / "model.pt2", tmp_path, tmp_path, timeout=60, wrap=fails)
    assert val["error_class"] == "eval" and "no model" in val["error"] and ahead is None


def test_a_harness_that_does_not_match_the_fingerprint_scores_nothing(workspace, tmp_path):
    out = tmp_path / "result.json"
    code = main(["--program", str(tmp_path / "missing.pt2"), "--workspace", str(workspace.root),
                 "--out", str(out), "--expect-fingerprint", "0" * 64])
    result = json.loads(out.read_text())
    assert code == 1 and result["error_class"] == "harness" and "fingerprint" in result["error"]
    assert "harness" in protocol.INTEGRITY_ERRORS
