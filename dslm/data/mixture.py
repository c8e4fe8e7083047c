"""Training sources mixed by weight: which source each sample position draws from, and the samplers (a
map-style one over the cached sources, a stream over streamed ones) that follow it and resume exactly.

The order is Megatron's blend done as stride scheduling: source i's k-th draw sits at time (k + 0.5) / w_i
and positions take the draws in time order (ties to the first source). Any prefix of m positions then
holds within one sample of m * w_i from each source: the realized shares match the weights at every
step of a run, not only on average, and the order depends on the weights alone. Within a source, the
samples follow a permutation of that source (seed, source, pass), a new one each time it runs out.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dslm.errors import ConfigError

SOURCE = "_source"  # the source a sample came from, until the loop counts its tokens


@dataclass(frozen=True)
class Mixture:
    names: tuple[str, ...]
    weights: tuple[float, ...]  # normalized: they sum to 1
    when_exhausted: str  # cycle | stop
    sizes: tuple[int, ...] = ()  # samples per source; empty for streams

    def epoch_length(self) -> int:
        """Positions in one epoch. cycle: until every source has been drawn whole at least once (a smaller
        source starts over meanwhile), as datasets' interleave_datasets(stopping_strategy="all_exhausted");
        stop: until the first source runs out ("first_exhausted"), and training ends there."""
        if self.when_exhausted == "stop":
            end = min((n + 0.5) / w for n, w in zip(self.sizes, self.weights, strict=True))  # the first extra draw
            return sum(max(0, math.ceil(end * w - 0.5)) for w in self.weights)  # draws strictly before it
        end = max((n - 0.5) / w for n, w in zip(self.sizes, self.weights, strict=True))  # the last needed draw
        return sum(math.floor(end * w - 0.5) + 1 for w in self.weights if end * w >= 0.5)

    def blend(self, length: int) -> np.ndarray:
        """The source of each of the first `length` positions."""
        counts = [math.ceil(length * w) + 1 for w in self.weights]
        times = np.concatenate([(np.arange(c) + 0.5) / w for c, w in zip(counts, self.weights, strict=True)])
        source = np.concatenate([np.full(c, i, np.int64) for i, c in enumerate(counts)])
        return source[np.argsort(times, kind="stable")[:length]]


def draws(weights: tuple[float, ...], counts: list[int]) -> Iterator[int]:
    """The blend as an endless stream, from the draws already made of each source (`counts`, updated)."""
    heap = [((c + 0.5) / w, i) for i, (c, w) in enumerate(zip(counts, weights, strict=True))]
    heapq.heapify(heap)
    while True:
        _, i = heapq.heappop(heap)
        counts[i] += 1
        heapq.heappush(heap, ((counts[i] + 0.5) / weights[i], i))
        yield i


def source_order(size: int, seed: int, source: int, first: int, count: int) -> np.ndarray:
    """Draws [first, first + count) of one source: pass p is permutation (seed, source, p) of its samples."""
    out = []
    for p in range(first // size, (first + count - 1) // size + 1) if count else ():
        perm = np.random.default_rng([seed, source, p]).permutation(size)
        lo, hi = max(first - p * size, 0), min(first + count - p * size, size)
        out.append(perm[lo:hi])
    return np.concatenate(out) if out else np.zeros(0, np.int64)


class MixedDataset(torch.utils.data.Dataset):
    """The cached sources side by side: sample j of source i is index offsets[i] + j; each sample says its source."""

    def __init__(self, parts: list[Any]) -> None:
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        where = np.searchsorted(self.offsets, indices, side="right") - 1
        out: list[dict[str, Any]] = [{}] * len(indices)
        for i in np.unique(where):  # one read per source (datasets reads a list of rows at once)
            picked = np.flatnonzero(where == i)
            rows = self.parts[i][[int(indices[k] - self.offsets[i]) for k in picked]]
            for k, row in zip(picked, _rows(rows), strict=True):
                out[k] = {**row, SOURCE: int(i)}
        return out


def _rows(columns: dict[str, list]) -> list[dict[str, Any]]:
    names = list(columns)
    return [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]


class MixtureSampler(torch.utils.data.Sampler):
    """ResumableSampler's contract (one order per epoch, dealt to ranks in turn, `skip` positions already
    consumed by all ranks together) for a mixture: the order is the blend, so a resumed run continues the
    same global order whatever its world size."""

    def __init__(self, mixture: Mixture, world: int, rank: int, seed: int, micro: int) -> None:
        self.mixture, self.world, self.rank, self.seed, self.micro = mixture, world, rank, seed, micro
        self.length = mixture.epoch_length()
        self.offsets = np.cumsum([0, *mixture.sizes])
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def per_epoch(self) -> int:
        return self.length // (self.world * self.micro) * self.world * self.micro

    def order(self, epoch: int) -> np.ndarray:
        """Indices into MixedDataset of one epoch's positions; a source's draws continue across epochs."""
        source = self.mixture.blend(self.length)
        order = np.empty(self.length, np.int64)
        for i, size in enumerate(self.mixture.sizes):
            at = np.flatnonzero(source == i)
            order[at] = self.offsets[i] + source_order(size, self.seed, i, epoch * len(at), len(at))
        return order

    def __iter__(self) -> Iterator[int]:
        order = self.order(self.epoch)[self.skip:self.per_epoch()]
        return iter(order[self.rank::self.world].tolist())

    def __len__(self) -> int:
        return max(0, self.per_epoch() - self.skip) // self.world


def check_sizes(mixture: Mixture, world: int, micro: int) -> None:
    for name, size in zip(mixture.names, mixture.sizes, strict=True):
        if size == 0:
            raise ConfigError(f"training source {name!r} has no example of the sequence length: give it more text "
                              f"or a smaller --max_seq_length")
    if mixture.when_exhausted == "stop" and mixture.epoch_length() < world * micro:
        raise ConfigError("when_exhausted: stop ends the mixture before one micro batch per rank: give the small "
                          "sources more text, change the weights, or use cycle")
