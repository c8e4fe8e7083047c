"""How long a run is: micro batches per epoch, optimizer steps and warmup, from the data size and the flags."""

from __future__ import annotations

import pytest

from dslm.config import RunConfig
from dslm.errors import ConfigError
from dslm.schedule import Schedule, known_early, plan


def config(**flags) -> RunConfig:
    flags.setdefault("per_device_train_batch_size", 4)
    flags.setdefault("gradient_accumulation_steps", 2)
    return RunConfig.from_flags(**flags)


def test_epochs_give_micro_batches_and_steps():
    # 100 examples over 4 x 2 ranks: 12 micro batches per rank, 6 optimizer steps per epoch.
    assert plan(100, config(num_train_epochs=3), world=2) == Schedule(18, 0, 12)
    assert plan(100, config(num_train_epochs=3), world=1) == Schedule(36, 0, 25)


def test_fractional_epochs_round_up():
    assert plan(100, config(num_train_epochs=1.5), world=2) == Schedule(9, 0, 12)
    assert plan(100, config(num_train_epochs=2.1), world=2) == Schedule(13, 0, 12)  # 12.6 -> 13


def test_max_steps_overrides_epochs():
    assert plan(100, config(num_train_epochs=3, max_steps=7), world=2) == Schedule(7, 0, 12)
    assert plan(100, config(max_steps=1000), world=2) == Schedule(1000, 0, 12)  # more than one epoch


def test_warmup_steps_and_ratio():
    assert plan(100, config(warmup_steps=5), world=2) == Schedule(18, 5, 12)
    assert plan(100, config(warmup_ratio=0.1), world=2) == Schedule(18, 2, 12)  # 1.8 -> 2
    assert plan(100, config(warmup_ratio=0.5), world=2) == Schedule(18, 9, 12)
    assert plan(100, config(warmup_steps=4, warmup_ratio=0.5), world=2) == Schedule(18, 4, 12)  # steps win
    assert plan(100, config(max_steps=10, warmup_ratio=0.25), world=2) == Schedule(10, 3, 12)  # 2.5 -> 3


def test_fewer_examples_than_a_global_batch():
    with pytest.raises(ConfigError) as err:
        plan(10, config(), world=2)  # 1 micro batch per rank, 2 needed for one step
    assert str(err.value) == ("the training set has 10 examples, fewer than one global batch (4 x 2 ranks x 2 "
                              "accumulation): give more data or a smaller batch")


def test_fewer_examples_than_a_micro_batch():
    with pytest.raises(ConfigError) as err:
        plan(7, config(max_steps=5), world=2)
    assert str(err.value) == ("the training set has 7 examples, fewer than one micro batch per rank (4 x 2 "
                              "ranks): give more data or a smaller batch")
    # With --max_steps, one micro batch per rank is enough: the epochs repeat.
    assert plan(8, config(max_steps=5), world=2) == Schedule(5, 0, 1)


def test_a_stream_has_no_epoch_length():
    c = config(max_steps=20, warmup_ratio=0.1, streaming=True)
    assert plan(None, c, world=4) == Schedule(20, 2, None)


def test_known_early_only_with_max_steps():
    assert known_early(config()) is None
    assert known_early(config(max_steps=20, warmup_ratio=0.25)) == Schedule(20, 5, None)
    assert known_early(config(max_steps=20, warmup_steps=3)) == Schedule(20, 3, None)
    # The early schedule is the one the data gives later.
    assert plan(1000, config(max_steps=20, warmup_ratio=0.25), world=2).total_steps == 20
