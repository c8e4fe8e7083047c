"""Which samples each rank takes, and where a resumed epoch continues."""

from dslm.data.sampler import ResumableSampler


def test_resumable_sampler_continues_the_epoch_whatever_the_world_size():
    n, micro = 103, 2
    for world in (1, 2, 4):  # one epoch dealt to the ranks covers each sample at most once
        dealt = [i for r in range(world) for i in ResumableSampler(n, world, r, seed=7, micro=micro)]
        assert len(dealt) == len(set(dealt)) == n // (world * micro) * world * micro
    # The first 24 samples taken on 2 ranks, the rest of the epoch on 1 rank: no repeats, none lost.
    two = [ResumableSampler(n, 2, r, seed=7, micro=micro) for r in range(2)]
    consumed = [i for s in two for i in list(s)[:12]]
    one = ResumableSampler(n, 1, 0, seed=7, micro=micro)
    one.set_epoch(0, skip=24)
    rest = list(one)
    assert not set(consumed) & set(rest)
    assert len(consumed) + len(rest) == one.per_epoch()
    assert sorted(consumed + rest) == sorted(list(ResumableSampler(n, 1, 0, 7, micro))[:one.per_epoch()])


def test_a_pass_that_gives_no_batch_is_an_error_not_an_endless_loop():
    import pytest
    from torch.utils.data import DataLoader

    from dslm.data.sampler import micro_batches
    from dslm.errors import ConfigError

    class Position:
        def set_epoch(self, epoch, skip=0):
            pass

    batches = micro_batches(DataLoader([], batch_size=4, collate_fn=list), Position(), 0, 0, list)
    with pytest.raises(ConfigError, match="a whole pass over this rank's share of the training data gave no batch"):
        next(batches)
    full = micro_batches(DataLoader([{"x": 1}] * 8, batch_size=4, collate_fn=list), Position(), 0, 6, list)
    assert [epoch for epoch, _ in [next(full) for _ in range(3)]] == [0, 0, 1]  # a resumed pass may be empty
