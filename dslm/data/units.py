"""The corpus as numbered units (a non-empty text, or a non-empty line with --line_by_line), read in
chunks of bounded size, so that any range of units can be read without holding the rest.

A first pass counts the units of each chunk (no tokenizer needed); the splits, the slices and the
workers are then ranges of unit numbers, and a range is read by skipping whole chunks unconverted.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dslm.data.sources import Raw, non_empty
from dslm.errors import ConfigError

CHUNK_BYTES = 4 << 20  # text per chunk, and so per encode call: every core busy, Encodings ~100 MB


def chunks(raw: Raw) -> Iterator[pa.Array]:
    """The text column in slices of about CHUNK_BYTES (at least one row each), across the record batches
    datasets wrote (about a thousand rows each), the same on every read."""
    pending: list[pa.Array] = []
    size = 0
    for array in raw.arrays():
        ends = np.cumsum(pc.binary_length(array).fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
        start = 0
        while start < len(array):
            done = int(ends[start - 1]) if start else 0
            stop = int(np.searchsorted(ends, done + CHUNK_BYTES - size, side="right"))
            if stop == start and not pending:
                stop = start + 1  # one row bigger than a chunk is a chunk
            if stop > start:
                pending.append(array.slice(start, stop - start))
                size += int(ends[stop - 1]) - done
                start = stop
            if start < len(array):  # the next row does not fit
                yield _joined(pending)
                pending, size = [], 0
    if pending:
        yield _joined(pending)


def _joined(arrays: list[pa.Array]) -> pa.Array:
    return arrays[0] if len(arrays) == 1 else pa.concat_arrays(arrays)


def units_of(chunk: pa.Array, line_by_line: bool) -> list[str]:
    return non_empty([t for t in chunk.to_pylist() if isinstance(t, str)], line_by_line)


@dataclass
class Counted:
    """A raw split with the number of units in each of its chunks."""

    raw: Raw
    per_chunk: np.ndarray
    line_by_line: bool

    @property
    def total(self) -> int:
        return int(self.per_chunk.sum())

    def read(self, start: int, stop: int) -> Iterator[list[str]]:
        """Units [start, stop), a chunk's worth at a time; chunks before `start` are skipped unconverted."""
        end = 0
        for chunk, n in zip(chunks(self.raw), self.per_chunk, strict=True):
            begin, end = end, end + int(n)
            if end <= start or n == 0:
                continue
            if begin >= stop:
                return
            units = units_of(chunk, self.line_by_line)
            yield units[max(0, start - begin):stop - begin]


def count(raw: Raw, line_by_line: bool) -> Counted:
    return Counted(raw, np.array([len(units_of(c, line_by_line)) for c in chunks(raw)], np.int64), line_by_line)


@dataclass(frozen=True)
class Span:
    """Units [start, stop) of one counted raw split."""

    source: str  # "train" or "validation": which raw split
    start: int
    stop: int

    def part(self, i: int, n: int) -> Span:
        """The i-th of n contiguous, nearly equal parts."""
        size = self.stop - self.start
        return Span(self.source, self.start + size * i // n, self.start + size * (i + 1) // n)


def plan(counted: dict[str, Counted], validation_split_percentage: float, train: bool = True) -> dict[str, Span]:
    """Which units make each split. Like run_mlm.py, without validation data the first N% of the
    training units are held out (deterministic: no shuffling)."""
    spans = {}
    n = counted["train"].total if "train" in counted else 0
    if train and n == 0:
        raise ConfigError("the training data has no text: give a file with non-empty text")
    if "validation" in counted:
        if counted["validation"].total == 0:
            raise ConfigError("the validation data has no text: give a file with non-empty text")
        spans["validation"] = Span("validation", 0, counted["validation"].total)
        held = 0
    elif train and validation_split_percentage > 0 and n > 1:
        held = max(1, math.floor(n * validation_split_percentage / 100))
        spans["validation"] = Span("train", 0, held)
    else:
        held = 0
    if train:
        spans["train"] = Span("train", held, n)
    return spans
