"""Checks of a model before any work: its memory on the node."""

from __future__ import annotations

import types

import pytest

from dslm import model_checks
from dslm.errors import ConfigError


@pytest.fixture
def memory_gib(monkeypatch):
    def set_total(gib: float) -> None:
        monkeypatch.setattr(model_checks.psutil, "virtual_memory", lambda: types.SimpleNamespace(total=gib * 2**30))
    return set_total


def test_each_rank_of_the_node_holds_a_whole_copy_unless_zero3_partitions_it(memory_gib):
    memory_gib(10)
    n = 1_000_000_000  # 1B parameters: 3.7 GiB in fp32
    model_checks.check_memory(n, ranks_per_node=2, partitioned=False)  # 7.5 GiB fits in 10
    with pytest.raises(ConfigError, match=r"^the model has 1.0B parameters, 3.7 GiB in fp32, one copy on each of the "
                                          r"node's 4 rank\(s\): 15 GiB, more than this machine's 10 GiB of memory: "
                                          r"make it smaller with --config_overrides, or build it partitioned with a "
                                          r"ZeRO-3 config \(--deepspeed zero3\)$"):
        model_checks.check_memory(n, ranks_per_node=4, partitioned=False)
    model_checks.check_memory(2 * n, ranks_per_node=4, partitioned=True)  # split over the node's ranks: 7.5 GiB
    with pytest.raises(ConfigError, match=r"split over the node's ranks \(ZeRO-3\): 11 GiB, more than"):
        model_checks.check_memory(3 * n, ranks_per_node=4, partitioned=True)
