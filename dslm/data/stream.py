"""Training text read, tokenized and packed on the fly (--streaming), for corpora too big to cache."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
from transformers import PreTrainedTokenizerBase

from dslm import dist
from dslm.config import RunConfig
from dslm.data import encode, sources


class StreamBlocks(torch.utils.data.IterableDataset):
    """Tokenize and pack on the fly; each rank (and DataLoader worker) reads every n-th text."""

    def __init__(self, config: RunConfig, tokenizer: PreTrainedTokenizerBase, columns: list[str]) -> None:
        self.config, self.columns = config, columns
        self.encode = encode.encoder(tokenizer, columns, line_by_line=config.data.line_by_line,
                                     max_seq_length=config.data.max_seq_length)
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """A resumed pass skips the `skip` samples (all ranks together) consumed before."""
        self.skip = skip

    def __iter__(self) -> Iterator[dict[str, list]]:
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        shards, shard = dist.world_size() * workers, dist.rank() * workers + worker
        texts = (t for i, t in enumerate(sources.stream_texts(self.config)) if i % shards == shard)
        return itertools.islice(self._examples(texts), self.skip // shards, None)

    def _examples(self, texts: Iterator[str]) -> Iterator[dict[str, list]]:
        block = self.config.data.max_seq_length
        buffers: dict[str, list] = {name: [] for name in self.columns}
        for batch in itertools.batched(texts, 1000) if hasattr(itertools, "batched") else _batched(texts, 1000):
            enc = self.encode(list(batch))
            if self.config.data.line_by_line:
                for i in range(len(enc["input_ids"])):
                    yield {name: enc[name][i] for name in self.columns}
                continue
            for name in self.columns:
                buffers[name].extend(x for row in enc[name] for x in row)
            while len(buffers["input_ids"]) >= block:  # the carry-over crosses batches: no tokens dropped
                yield {name: buffers[name][:block] for name in self.columns}
                for name in self.columns:
                    del buffers[name][:block]


def _batched(items: Iterator, n: int) -> Iterator[tuple]:
    while chunk := tuple(itertools.islice(items, n)):
        yield chunk
