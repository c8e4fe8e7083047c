"""Mixing sources by weight: the blend's shares, its epochs, and samplers that resume the same order."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from datasets import Dataset

from dslm.data import mixture
from dslm.data.mixture import MixedDataset, Mixture, MixtureSampler


@pytest.mark.parametrize("weights", [(0.5, 0.3, 0.2), (0.7, 0.3), (0.97, 0.02, 0.01), (1 / 3, 1 / 3, 1 / 3)])
def test_every_prefix_of_the_blend_is_within_one_sample_of_the_weights(weights):
    """Stride scheduling: the tolerance is one sample per source at every step, so the shares over a run of
    m samples are within 1/m of the weights (a weighted random draw would be off by ~sqrt(w/m))."""
    source = Mixture(tuple("abc"[:len(weights)]), weights, "cycle").blend(5000)
    counts = np.stack([np.cumsum(source == i) for i in range(len(weights))], 1)
    m = np.arange(1, 5001)[:, None]
    assert np.abs(counts - m * np.array(weights)).max() <= 1.0


def test_the_streaming_draws_are_the_same_blend_and_resume_from_counts():
    weights = (0.5, 0.3, 0.2)
    whole = Mixture(("a", "b", "c"), weights, "cycle").blend(300)
    assert list(itertools.islice(mixture.draws(weights, [0, 0, 0]), 300)) == whole.tolist()
    counts = [int((whole[:137] == i).sum()) for i in range(3)]
    assert list(itertools.islice(mixture.draws(weights, counts), 163)) == whole[137:].tolist()


def test_epoch_lengths_cycle_until_all_are_seen_and_stop_at_the_first_to_run_out():
    cycle = Mixture(("a", "b"), (0.5, 0.5), "cycle", (100, 10))
    n = cycle.epoch_length()
    source = cycle.blend(n)
    assert (source == 0).sum() >= 100 and (source == 0).sum() - 1 < 100  # a is drawn whole once
    stop = Mixture(("a", "b"), (0.5, 0.5), "stop", (100, 10))
    n = stop.epoch_length()
    source = stop.blend(n)
    assert (source == 1).sum() == 10 and n in (20, 21)  # b ends it: none of b's samples twice
    stop = Mixture(("a", "b", "c"), (0.2, 0.3, 0.5), "stop", (50, 1000, 1000))
    source = stop.blend(stop.epoch_length())
    assert (source == 0).sum() == 50 and all((source == i).sum() <= n for i, n in enumerate(stop.sizes))


def sampler(world=1, rank=0, seed=0, sizes=(40, 25, 7), micro=2):
    mix = Mixture(("a", "b", "c"), (0.5, 0.3, 0.2), "cycle", sizes)
    return MixtureSampler(mix, world, rank, seed, micro)


def test_the_order_follows_the_blend_each_source_shuffled_by_the_seed_and_cycled():
    s = sampler()
    order = s.order(0)
    offsets = s.offsets
    source = np.searchsorted(offsets, order, side="right") - 1
    assert source.tolist() == s.mixture.blend(len(order)).tolist()
    small = order[source == 2] - offsets[2]
    assert sorted(small[:7].tolist()) == list(range(7))  # one whole pass of c, then another
    assert sorted(small[7:14].tolist()) == list(range(7)) and small[:7].tolist() != small[7:14].tolist()
    assert sampler(seed=0).order(0).tolist() == order.tolist()
    assert sampler(seed=1).order(0).tolist() != order.tolist()
    assert sampler().order(1).tolist() != order.tolist()  # the next epoch continues each source's draws


def test_a_resumed_sampler_continues_the_global_order_whatever_the_world_size():
    whole = list(sampler(world=1, micro=2))
    two = [list(sampler(world=2, rank=r)) for r in range(2)]
    dealt = [x for pair in zip(*two, strict=True) for x in pair]
    assert dealt == whole[:len(dealt)]
    for world in (1, 2, 4):  # 12 samples consumed by any world size, then resumed by another
        parts = []
        for rank in range(world):
            s = sampler(world=world, rank=rank)
            s.set_epoch(0, skip=12)
            parts.append(list(s))
        resumed = [x for group in zip(*parts, strict=True) for x in group]
        assert resumed == whole[12:12 + len(resumed)]


def test_mixed_dataset_reads_each_source_and_says_which():
    parts = [Dataset.from_dict({"input_ids": [[i, i] for i in range(n)]}).with_format("python") for n in (3, 2)]
    data = MixedDataset(parts)
    assert len(data) == 5
    rows = data.__getitems__([4, 0, 3, 2])
    assert [r["input_ids"][0] for r in rows] == [1, 0, 0, 2]
    assert [r[mixture.SOURCE] for r in rows] == [1, 0, 1, 0]
    assert data[1]["input_ids"] == [1, 1]


def test_sources_too_small_are_refused():
    with pytest.raises(Exception, match="has no example of the sequence length"):
        mixture.check_sizes(Mixture(("a", "b"), (0.5, 0.5), "cycle", (10, 0)), 1, 2)
    with pytest.raises(Exception, match="before one micro batch per rank"):
        mixture.check_sizes(Mixture(("a", "b"), (0.5, 0.5), "stop", (1000, 1)), 4, 8)
