"""Reported figures: FLOPs per token, perplexity, and the loss/token window between logs (one process)."""

from __future__ import annotations

import math
import types

import pytest
import torch

from dslm import metrics
from dslm.metrics import Window, flops_per_token, perplexity


def test_flops_per_token():
    # 6N for the weights, 12 * layers * hidden * seq for attention
    assert flops_per_token(100, 2, 32, 64, "mlm") == 6 * 100 + 12 * 2 * 32 * 64 == 49752
    assert flops_per_token(100, 2, 32, 64, "clm") == 49752
    assert flops_per_token(100, 2, 32, 64, "plm") == 6 * 100 + 2 * 12 * 2 * 32 * 64 == 98904  # two streams
    assert flops_per_token(1_000_000, 0, 32, 64, "plm") == 6_000_000


def test_perplexity():
    assert perplexity(0.0) == 1.0
    assert perplexity(2.0) == math.exp(2.0)
    assert perplexity(50.0) == math.exp(50.0)
    # exp(1000) would overflow: a huge loss is clamped
    assert perplexity(1000.0) == math.exp(50.0)
    assert perplexity(float("inf")) == math.exp(50.0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(metrics, "time", types.SimpleNamespace(perf_counter=c.perf_counter))
    return c


def test_window_without_a_process_group(clock):
    assert not torch.distributed.is_initialized()  # dist.all_reduce is then a no-op
    w = Window(torch.device("cpu"))
    w.add_tokens(torch.tensor([100]))
    w.add_step(torch.tensor(6.0), 3)  # the summed loss of 3 micro batches
    w.add_tokens(torch.tensor([50]))
    w.add_step(torch.tensor(3.0), 1)
    clock.now = 102.5
    assert w.take() == (2.25, 150, 2.5)
    # a new window
    clock.now = 103.0
    assert w.take() == (None, 0, 0.5)


def test_window_of_skipped_steps_only(clock):
    w = Window(torch.device("cpu"))
    w.add_tokens(torch.tensor([64]))  # a skipped step's tokens count, its loss does not
    clock.now = 101.0
    assert w.take() == (None, 64, 1.0)


def test_unlogged_tokens_does_not_reset(clock):
    w = Window(torch.device("cpu"))
    w.add_tokens(torch.tensor([30]))
    w.add_step(torch.tensor(1.5), 1)
    assert w.unlogged_tokens() == 30
    w.add_tokens(torch.tensor([10]))
    assert w.unlogged_tokens() == 40
    clock.now = 104.0
    assert w.take() == (1.5, 40, 4.0)
    assert w.unlogged_tokens() == 0


def test_window_counts_tokens_exactly_past_float32_precision(clock):
    w = Window(torch.device("cpu"))
    for _ in range(200):  # micro batches of 32 x 4096 tokens (one of them padding), 200 between two logs
        w.add_tokens(torch.tensor([32 * 4096 - 1]))
    assert w.unlogged_tokens() == 200 * 131071
    assert w.take()[1] == 200 * 131071


def test_window_counts_each_sources_tokens(clock):
    w = Window(torch.device("cpu"), sources=3)
    w.add_tokens(torch.tensor([64, 64, 10, 64]), torch.tensor([0, 2, 2, 0]))  # per sample, and its source
    assert w.unlogged_by_source() == [128, 0, 74]
    w.add_tokens(torch.tensor([5]), torch.tensor([1]))
    assert w.take()[1] == 207 and w.by_source == [128, 5, 74]
    assert w.unlogged_by_source() == [0, 0, 0]


def test_memory_figures():
    figures = metrics.memory_figures()
    assert list(figures) == ["memory/peak_gpu_gb" if torch.cuda.is_available() else "memory/rss_gb"]
    assert 0 <= next(iter(figures.values())) < 1024


def test_peak_flops_unknown_on_cpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert metrics.peak_flops("bf16") is None
