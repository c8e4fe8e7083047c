"""Which samples each rank takes, in an order that a resumed run continues exactly."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from dslm.data.mixture import SOURCE
from dslm.data.stream import KEY
from dslm.errors import ConfigError


class ResumableSampler(torch.utils.data.Sampler):
    """Each epoch: one permutation of the whole training set (seed + epoch), dealt to ranks in
    turn, like DistributedSampler(drop_last=True). A resumed epoch skips the first `skip`
    samples of that permutation: the samples consumed before, whatever the old world size."""

    def __init__(self, n: int, world: int, rank: int, seed: int, micro: int) -> None:
        self.n, self.world, self.rank, self.seed, self.micro = n, world, rank, seed, micro
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def per_epoch(self) -> int:
        """Samples one epoch consumes on all ranks together."""
        return self.n // (self.world * self.micro) * self.world * self.micro

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=g)[self.skip:self.per_epoch()]
        return iter(order[self.rank::self.world].tolist())

    def __len__(self) -> int:
        return max(0, self.per_epoch() - self.skip) // self.world


def micro_batches(loader: DataLoader, position: Any, epoch: int, skip: int,
                  collate: Callable[[list[dict]], dict]) -> Iterator[tuple[int, Any]]:
    """Endless (epoch, batch) stream from `skip` samples into `epoch`; a stream restarts its pass.

    `position` is the loader's ResumableSampler, or the StreamBlocks dataset when streaming. The
    loader gives lists of samples and they are collated here, in this process: masks drawn in
    DataLoader workers would come from the workers' random state, which a resumed run cannot restore.
    """
    took = getattr(position, "took", None)  # a stream records where each batch it gives up came from
    resumed = True  # the first pass may start at its end
    while True:
        position.set_epoch(epoch, skip)
        gave = False
        for samples in loader:
            gave = True
            if took is not None:
                took([sample.pop(KEY) for sample in samples][-1])
            source = [sample.pop(SOURCE) for sample in samples] if SOURCE in samples[0] else None
            batch = collate(samples)
            if source is not None:  # which training source each sample came from: the loop counts its tokens
                batch[SOURCE] = torch.tensor(source)
            yield epoch, batch
        if not gave and not resumed:  # a whole pass that gives nothing would give nothing forever
            raise ConfigError(f"a whole pass over this rank's share of the training data gave no batch of "
                              f"{loader.batch_size}: give more text, or use fewer ranks or DataLoader workers, or a "
                              f"smaller --per_device_train_batch_size or --max_seq_length")
        epoch, skip, resumed = epoch + 1, 0, False
