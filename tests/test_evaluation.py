"""The Evaluator's cadence and the per-batch token statistics behind loss, perplexity and accuracy."""

from __future__ import annotations

import math
import types

import pytest
import torch

from dslm.evaluation import Evaluator, token_stats
from dslm.objectives import Forward


def evaluator(eval_steps: int | None, validation=None) -> Evaluator:
    sets = {} if validation is None else {"": validation}
    return Evaluator(sets, collate=list, objective="mlm", batch_size=2, seed=0, eval_steps=eval_steps)


def test_should_eval_every_n_steps_but_not_the_last():
    e = evaluator(5)
    assert [s for s in range(1, 21) if e.should_eval(s, 20)] == [5, 10, 15]  # the end evaluates step 20
    assert [s for s in range(1, 23) if e.should_eval(s, 22)] == [5, 10, 15, 20]


def test_no_eval_steps_means_only_before_and_after():
    e = evaluator(None)
    assert [s for s in range(1, 21) if e.should_eval(s, 20)] == []


def test_no_validation_set_gives_no_figures():
    assert evaluator(5)(engine=object()) == {}


def one_hot(index: int, scale: float, vocab: int) -> list[float]:
    return [scale if i == index else 0.0 for i in range(vocab)]


def ce(logits: list[float], label: int) -> float:
    return math.log(sum(math.exp(x) for x in logits)) - logits[label]


class FixedLogits(torch.nn.Module):
    """A stand-in model whose logits are given: what Forward and token_stats make of them is under test."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.config = types.SimpleNamespace(model_type="fixed")

    def forward(self, **inputs: torch.Tensor) -> types.SimpleNamespace:
        return types.SimpleNamespace(logits=self.logits)


def stats(logits: torch.Tensor, labels: torch.Tensor, objective: str) -> torch.Tensor:
    model = FixedLogits(logits)
    out = Forward(model, objective, sparse=False)(model, {"input_ids": labels.clamp(min=0), "labels": labels},
                                                  torch.device("cpu"))
    return token_stats(out)


def test_mlm_counts_only_labelled_positions():
    rows = [[0.0] * 4, one_hot(3, 10.0, 4), one_hot(1, 10.0, 4)]
    logits = torch.tensor([rows, [one_hot(2, 1.0, 4)] * 3])
    labels = torch.tensor([[2, -100, 1], [-100, -100, 0]])
    loss, correct, count = stats(logits, labels, "mlm").tolist()
    # (0,0): a tie predicts 0, wrong; (0,2): right; (1,2): predicts 2, wrong
    assert (correct, count) == (1.0, 3.0)
    assert loss == pytest.approx(ce(rows[0], 2) + ce(rows[2], 1) + ce(one_hot(2, 1.0, 4), 0), rel=1e-6)


def test_clm_shifts_predictions_by_one():
    vocab = 5
    positions = [one_hot(1, 2.0, vocab),  # predicts label[1] = 1: right
                 one_hot(3, 3.0, vocab),  # predicts label[2] = 2: wrong
                 one_hot(4, 9.0, vocab),  # label[3] is -100: not counted
                 one_hot(0, 9.0, vocab)]  # the last position has nothing to predict
    logits = torch.tensor([positions])
    labels = torch.tensor([[4, 1, 2, -100]])  # label[0] is never predicted
    loss, correct, count = stats(logits, labels, "clm").tolist()
    assert (correct, count) == (1.0, 2.0)
    assert loss == pytest.approx(ce(positions[0], 1) + ce(positions[1], 2), rel=1e-6)
    # the same tensors unshifted (mlm) are a different count
    assert stats(logits, labels, "mlm").tolist()[1:] == [0.0, 3.0]


def test_half_precision_logits_are_summed_in_float32():
    logits = torch.tensor([[one_hot(1, 2.0, 3), one_hot(0, 2.0, 3)]], dtype=torch.bfloat16)
    labels = torch.tensor([[1, 2]])
    result = stats(logits, labels, "mlm")
    assert result.dtype == torch.float32
    assert result.tolist()[1:] == [1.0, 2.0]
    assert result[0].item() == pytest.approx(ce(one_hot(1, 2.0, 3), 1) + ce(one_hot(0, 2.0, 3), 2), rel=1e-6)


def test_no_labels():
    assert stats(torch.zeros(1, 3, 4), torch.full((1, 3), -100), "mlm").tolist() == [0.0, 0.0, 0.0]
