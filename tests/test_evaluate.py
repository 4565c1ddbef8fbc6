"""The frozen metric: bits per byte by hand, the causality probe, the op allowlist, a fresh process."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from autoresearch.harness.evaluate import EvalError, bits_per_byte, check_graph, nats_and_bytes
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
    assert result["error_class"] == "shape"


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
