"""Training text read, tokenized and packed on the fly (--streaming), for corpora too big to cache.

The stream is cut into readers, one per (rank, DataLoader worker): reader k of K reads only its
share. Text and JSON-lines files are shared by byte range (a reader starts at the first line that
begins in its range), the built-in corpus by index; other sources (Parquet, CSV, JSON arrays,
--dataset_name) go through datasets' streaming reader, split by `split_dataset_by_node`: whole
files per reader where the files divide evenly, else every K-th row.

Each sample carries its reader's position: the start of the text batch it came from (a byte offset,
an index, or datasets' stream state), the tokens carried into that batch, and how many samples of
it were taken. The training loop records the position of every batch it consumes, a checkpoint
stores them all, and a resumed run seeks each reader straight to its position: one text batch is
tokenized again, nothing before it is read (datasets' stream goes back to the file it was in and
skips that file's rows before the position without tokenizing them). A resume with
another number of readers (world size or --dataloader_num_workers changed) starts the next pass:
the rest of the interrupted pass is skipped, so no sample is seen twice within a pass.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from dslm import dist, inputs
from dslm.config import RunConfig
from dslm.data import encode, mixture, sources, spec
from dslm.errors import ConfigError

BATCH_TEXTS, BATCH_BYTES = 1000, 1 << 20  # per encode call; a resume re-encodes one such batch
KEY = "_stream"  # the position a sample carries until the loop takes its batch


class Reader:
    """Text batches of reader k of K, each with the position of its start, from a position on."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        path = config.data.train_file
        self.kind = Path(path).suffix.lower() if path else "builtin"
        if path and (config.data.sample_by != "line" or spec.files(path) != [path]):
            self.kind = "rows"  # paragraphs, whole files, several files: datasets' reader cuts them

    def batches(self, k: int, n: int, start: Any) -> Iterator[tuple[Any, list[str]]]:
        if self.kind in (".txt", ".jsonl"):
            return self._lines(k, n, start)
        if self.kind == "builtin":
            texts = sources.builtin_texts()
            lo, hi = len(texts) * k // n, len(texts) * (k + 1) // n
            first = lo if start is None else start
            return ((i, texts[i:min(i + BATCH_TEXTS, hi)]) for i in range(first, hi, BATCH_TEXTS))
        return self._rows(k, n, start)

    def _lines(self, k: int, n: int, start: int | None) -> Iterator[tuple[int, list[str]]]:
        path = self.config.data.train_file
        size = Path(path).stat().st_size
        lo, hi = size * k // n, size * (k + 1) // n
        # The column every other reader of the file picks (the start-up check, the cache build).
        first = inputs.first_row(path, "json") if self.kind == ".jsonl" else None
        column = inputs.row_text_column(first, self.config.data.text_column, path) if first else "text"
        with open(path, "rb") as f:
            if start is not None:
                f.seek(start)
            elif lo > 0:
                f.seek(lo - 1)
                f.readline()  # the line that began before lo belongs to the previous reader
            while (at := f.tell()) < hi:
                batch, read = [], 0
                while f.tell() < hi and len(batch) < BATCH_TEXTS and read < BATCH_BYTES:
                    line = f.readline()
                    read += len(line)
                    batch.append(self._text(line, path, column))
                yield at, [t for t in batch if t]

    def _text(self, line: bytes, path: str, column: str) -> str | None:
        try:
            text = line.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            raise inputs.not_utf8(path, path, inputs.describe(exc)) from None
        if self.kind == ".txt" or not text.strip():
            return text
        value = json.loads(text).get(column)
        return value if isinstance(value, str) else None

    def _rows(self, k: int, n: int, start: dict | None) -> Iterator[tuple[dict | None, list[str]]]:
        """Reader k's share of datasets' stream (whole files where there are enough of them, else every
        n-th row), from the stream's own state: its file and row within it."""
        from datasets.distributed import split_dataset_by_node

        rows = split_dataset_by_node(sources.stream_dataset(self.config), rank=k, world_size=n)
        if start is not None:
            rows.load_state_dict(start)
        texts, at = sources.row_texts(self.config, rows), start
        while batch := list(itertools.islice(texts, BATCH_TEXTS)):
            yield at, batch
            at = rows.state_dict()  # after the batch's last row


class StreamBlocks(torch.utils.data.IterableDataset):
    """Tokenize and pack on the fly, each reader its share; positions are recorded for an exact resume."""

    def __init__(self, config: RunConfig, tokenizer: PreTrainedTokenizerBase, columns: list[str]) -> None:
        self.reader = Reader(config)
        self.encode = encode.encoder(tokenizer, columns, line_by_line=config.data.line_by_line,
                                     max_seq_length=config.data.max_seq_length)
        self._positions(config, columns)

    def _positions(self, config: RunConfig, columns: list[str]) -> None:
        self.config, self.columns = config, columns
        self.epoch = 0
        self.resume: dict[int, dict[str, Any]] = {}  # reader -> position, to continue from
        self.consumed: dict[int, dict[str, Any]] = {}  # reader -> position after the last batch taken
        # A DataLoader takes batches from its workers in turn, starting with worker 0: a resumed pass
        # turns the workers' readers so that worker 0 reads the reader whose batch came next.
        self.rotation, self.taken_in_pass = 0, 0
        self.resumed_pass: int | None = None

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """A new pass (positions are per reader: `skip` is the sampler's, unused here)."""
        if epoch != self.epoch:
            self.taken_in_pass = 0
        self.epoch = epoch
        if epoch != self.resumed_pass:
            self.rotation = 0

    def readers(self) -> int:
        return dist.world_size() * max(1, self.config.train.dataloader_num_workers)

    def restore(self, saved: dict[str, Any] | None) -> int:
        """The positions of a checkpoint; returns the pass this rank continues."""
        if not saved:
            return self.epoch
        states = {int(k): v for k, v in saved["states"].items()}
        if saved["readers"] != self.readers():  # the shares changed: the rest of this pass is skipped
            self.epoch = max((s["pass"] for s in states.values()), default=0) + 1
            return self.epoch
        self.resume = states
        workers = max(1, self.config.train.dataloader_num_workers)
        self.rotation = int(saved.get("next_worker", {}).get(str(dist.rank()), 0))
        # The rank's loader starts a pass when all its workers finished the last: the newest pass is the rank's.
        mine = [states[k]["pass"] for k in range(dist.rank() * workers, (dist.rank() + 1) * workers) if k in states]
        self.epoch = self.resumed_pass = max(mine, default=0)
        return self.epoch

    def took(self, position: tuple[int, dict[str, Any]]) -> None:
        reader, state = position
        self.consumed[reader] = state
        self.taken_in_pass += 1

    def snapshot(self) -> dict[str, Any]:
        """Every rank's positions (a collective: all ranks call it, at a checkpoint)."""
        workers = max(1, self.config.train.dataloader_num_workers)
        mine = (self.consumed, (self.rotation + self.taken_in_pass) % workers)
        merged: dict[str, Any] = {}
        next_worker = {}
        for rank, (consumed, turn) in enumerate(dist.all_gather_object(mine)):
            merged.update({str(k): v for k, v in consumed.items()})
            next_worker[str(rank)] = turn
        return {"readers": self.readers(), "states": merged, "next_worker": next_worker}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        k = dist.rank() * workers + (worker + self.rotation) % workers
        state = self.resume.get(k)
        if state is not None and state["pass"] != self.epoch:
            state = None
        return self._samples(k, dist.world_size() * workers, state)

    def _samples(self, k: int, n: int, state: dict[str, Any] | None) -> Iterator[dict[str, Any]]:
        block, line_by_line = self.config.data.max_seq_length, self.config.data.line_by_line
        carry = state["carry"] if state else {name: [] for name in self.columns}
        skip = state["taken"] if state else 0
        for at, texts in self.reader.batches(k, n, state["offset"] if state else None):
            enc = self.encode(sources.non_empty(texts, sources.split_lines(self.config.data)))
            start_carry = {name: list(values) for name, values in carry.items()}
            if line_by_line:
                samples = ({name: enc[name][i] for name in self.columns} for i in range(len(enc["input_ids"])))
            else:
                for name in self.columns:
                    carry[name].extend(x for row in enc[name] for x in row)
                samples = self._blocks(carry, block)
            for taken, sample in enumerate(samples, 1):
                if taken <= skip:
                    continue
                sample[KEY] = (k, {"pass": self.epoch, "offset": at, "carry": start_carry, "taken": taken})
                yield sample
            skip = 0

    def _blocks(self, carry: dict[str, list], block: int) -> Iterator[dict[str, list]]:
        """Full blocks off the front of `carry`; the rest carries into the next batch: no tokens dropped."""
        n = len(carry["input_ids"]) // block
        for i in range(n):
            yield {name: carry[name][i * block:(i + 1) * block] for name in self.columns}
        for name in self.columns:
            del carry[name][:n * block]


class MixedStream(StreamBlocks):
    """Streamed sources mixed by weight: each reader draws from its share of every source in the order of
    the blend (data.mixture), and a source that runs out on a reader starts its next pass there. A
    position holds the reader's draws so far and each source's own position and pass."""

    def __init__(self, config: RunConfig, streams: list[StreamBlocks], weights: tuple[float, ...]) -> None:
        self.streams, self.weights = streams, weights
        self._positions(config, streams[0].columns)

    def _samples(self, k: int, n: int, state: dict[str, Any] | None) -> Iterator[dict[str, Any]]:
        counts = list(state["counts"]) if state else [0] * len(self.streams)
        passes = list(state["passes"]) if state else [0] * len(self.streams)
        positions = list(state["sources"]) if state else [None] * len(self.streams)
        its = [s._samples(k, n, p) for s, p in zip(self.streams, positions, strict=True)]
        for i in mixture.draws(self.weights, counts):
            sample = next(its[i], None)
            if sample is None:  # this source's share is used up: its next pass
                passes[i] += 1
                its[i] = self.streams[i]._samples(k, n, None)
                sample = next(its[i], None)
                if sample is None:
                    raise ConfigError(f"a training source gives stream reader {k} of {n} no block: give it more "
                                      f"text, or use fewer ranks or DataLoader workers")
            positions[i] = sample[KEY][1]
            sample[KEY] = (k, {"pass": self.epoch, "counts": list(counts), "passes": list(passes),
                               "sources": list(positions)})
            sample[mixture.SOURCE] = i
            yield sample
