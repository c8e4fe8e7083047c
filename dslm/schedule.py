"""How long a run is: micro batches per epoch, optimizer steps, warmup; a pure function of the data
size and the flags."""

from __future__ import annotations

import math
from dataclasses import dataclass

from dslm.config import RunConfig
from dslm.errors import ConfigError


@dataclass(frozen=True)
class Schedule:
    total_steps: int
    warmup_steps: int
    micro_per_epoch: int | None = None  # per rank; None for a stream, which has no length


def warmup(config: RunConfig, total_steps: int) -> int:
    t = config.train
    return t.warmup_steps or math.ceil(t.warmup_ratio * total_steps)


def known_early(config: RunConfig) -> Schedule | None:
    """The schedule when the flags alone fix it (--max_steps); an epoch-based run waits for the data."""
    if config.train.max_steps <= 0:
        return None
    return Schedule(config.train.max_steps, warmup(config, config.train.max_steps))


def plan(n_train: int | None, config: RunConfig, world: int, one_pass: bool = False) -> Schedule:
    """The schedule for `n_train` training examples (None: a stream) on `world` ranks; `one_pass`: the data
    ends after one epoch (a mixture that stops when a source runs out), and so does training."""
    t = config.train
    if n_train is None:  # a stream has no length: --max_steps (required) sets the schedule
        return Schedule(t.max_steps, warmup(config, t.max_steps))
    micro_per_epoch = n_train // (t.per_device_train_batch_size * world)
    steps_per_epoch = micro_per_epoch // t.gradient_accumulation_steps
    if steps_per_epoch == 0 and t.max_steps <= 0:
        raise ConfigError(f"the training set has {n_train} examples, fewer than one global batch "
                          f"({t.per_device_train_batch_size} x {world} ranks x {t.gradient_accumulation_steps} "
                          f"accumulation): give more data or a smaller batch")
    if micro_per_epoch == 0:
        raise ConfigError(f"the training set has {n_train} examples, fewer than one micro batch per rank "
                          f"({t.per_device_train_batch_size} x {world} ranks): give more data or a smaller batch")
    total = t.max_steps if t.max_steps > 0 else math.ceil(t.num_train_epochs * steps_per_epoch)
    if one_pass:
        if steps_per_epoch == 0:
            raise ConfigError(f"when_exhausted: stop ends the mixture after {n_train} examples, fewer than one global "
                              f"batch: give the small sources more text, change the weights, or use cycle")
        total = min(total, steps_per_epoch)
    return Schedule(total, warmup(config, total), micro_per_epoch)
