"""Tokenized splits, built once (per node, or per slice by `dslm prepare`) and cached, keyed by
everything that shapes them."""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from dslm import atomic, dist
from dslm import tokenizer as tok
from dslm.config import RunConfig
from dslm.data import encode, slices, sources, units
from dslm.data.stream import StreamBlocks
from dslm.errors import ConfigError

PREPARE = "dslm prepare"


@dataclass
class Prepared:
    tokenizer: PreTrainedTokenizerBase
    train: Dataset | StreamBlocks  # a stream with --streaming
    validation: Dataset | None
    fingerprint: str  # of the raw data, tokenizer and preprocessing: names the cache


def tokenizer_dir(config: RunConfig, family: str, source: str) -> Path:
    """Where the tokenizer trained for this corpus is kept."""
    d = config.data
    key = hashlib.sha256(f"{source}|{family}|{config.model.vocab_size}|{d.tokenizer_train_samples}".encode())
    return tok.cache_root(d.cache_dir) / f"tokenizer-{key.hexdigest()[:16]}"


class Inputs:
    """What a run's cache is made from, each part read at most once and only when needed: the raw
    splits (for the tokenizer's sample and the build), the tokenizer, the cache's key."""

    def __init__(self, config: RunConfig, family: str, objective: str,
                 tokenizer: PreTrainedTokenizerBase | None) -> None:
        self.config = config
        cfg = config.data
        self.source = sources.source_fingerprint(cfg)
        if tokenizer is None:
            tokenizer = tok.train_once(tokenizer_dir(config, family, self.source), family, config.model.vocab_size,
                                       self._tokenizer_texts, overwrite=cfg.overwrite_cache)
        self.tokenizer = tokenizer
        self.columns = encode.columns_for(objective, config.objective.whole_word_mask)
        self.params = (f"{self.source}|{tok.fingerprint(tokenizer)}|{cfg.max_seq_length}|{cfg.line_by_line}|"
                       f"{self.columns}|{cfg.streaming}|{slices.CACHE_FORMAT}")
        self.fingerprint = hashlib.sha256(self.params.encode()).hexdigest()[:16]
        self.data_dir = config.cache_dir / f"tokenized-{self.fingerprint}"

    @functools.cached_property
    def raw(self) -> dict[str, sources.Raw]:
        return sources.raw_splits(self.config, train=not self.config.data.streaming)

    def _tokenizer_texts(self) -> list[str]:
        """A bounded sample, the same on every run: a vocabulary needs far less than a pretraining corpus."""
        n = self.config.data.tokenizer_train_samples
        if self.config.data.streaming:
            return list(itertools.islice(sources.stream_texts(self.config), n))
        return self.raw["train"].sample(n)

    def job(self) -> slices.Job:
        cfg = self.config.data
        counted = {name: units.count(raw, cfg.line_by_line) for name, raw in self.raw.items()}
        spans = units.plan(counted, cfg.validation_split_percentage, train=not cfg.streaming)
        enc = encode.Encoder(self.tokenizer, self.columns, line_by_line=cfg.line_by_line,
                             max_seq_length=cfg.max_seq_length)
        return slices.Job(counted, spans, enc, not cfg.line_by_line, self.params)

    def build(self, out: Path, index: int = 0, num_shards: int = 1) -> None:
        slices.write(out, self.job(), index, num_shards, max(1, self.config.data.preprocessing_num_workers or 1))


def prepare(config: RunConfig, family: str, objective: str,
            tokenizer: PreTrainedTokenizerBase | None = None) -> Prepared:
    """Tokenized splits with the given tokenizer, or with one trained on the corpus (None)."""
    cfg = config.data
    inputs = Inputs(config, family, objective, tokenizer)
    stream = StreamBlocks(config, inputs.tokenizer, inputs.columns) if cfg.streaming else None
    if cfg.streaming and not cfg.validation_file:  # nothing to cache
        return Prepared(inputs.tokenizer, stream, None, inputs.fingerprint)
    data_dir = inputs.data_dir
    if cfg.overwrite_cache and dist.local_rank() == 0 and data_dir.exists():
        atomic.remove(data_dir)
    dist.barrier()
    chosen = slices.choose(data_dir, cfg.num_shards, PREPARE)
    if chosen is None:
        whole = data_dir / slices.name(0, 1)
        dist.build_once_per_node(whole, inputs.build, "tokenized data")
        chosen = [whole]
    splits = slices.load(chosen, inputs.params, None if cfg.line_by_line else cfg.max_seq_length)
    validation = splits.get("validation")
    if validation is not None:
        if cfg.max_eval_samples:
            validation = validation.select(range(min(cfg.max_eval_samples, len(validation))))
        validation = validation.with_format("python")
    if cfg.streaming:
        return Prepared(inputs.tokenizer, stream, validation, inputs.fingerprint)
    train = splits["train"]
    if cfg.max_train_samples:
        train = train.select(range(min(cfg.max_train_samples, len(train))))
    return Prepared(inputs.tokenizer, train.with_format("python"), validation, inputs.fingerprint)


def prepare_slice(config: RunConfig, family: str, objective: str,
                  tokenizer: PreTrainedTokenizerBase | None = None) -> dict[str, Any]:
    """`dslm prepare --num_shards N --shard_index I`: slice I only (the tokenizer first, trained once
    by whichever slice gets to it first). Returns the slice's record."""
    cfg = config.data
    assert cfg.num_shards is not None and cfg.shard_index is not None
    inputs = Inputs(config, family, objective, tokenizer)
    target = inputs.data_dir / slices.name(cfg.shard_index, cfg.num_shards)
    if cfg.overwrite_cache and target.exists():
        atomic.remove(target)
    if not target.exists():
        atomic.write_directory(target, lambda out: inputs.build(out, cfg.shard_index, cfg.num_shards))
    return {"path": target, "fingerprint": inputs.fingerprint, **json.loads((target / slices.META).read_text())}


def check_slices(config: RunConfig, family: str, objective: str, tokenizer: PreTrainedTokenizerBase | None) -> None:
    """Before a run writes anything: with --num_shards, every slice of the set is in the cache."""
    cfg = config.data
    if cfg.num_shards is None:
        return
    if tokenizer is None:
        directory = tokenizer_dir(config, family, sources.source_fingerprint(cfg))
        if not directory.exists():
            raise ConfigError(f"no slice of {cfg.num_shards} is prepared in {config.cache_dir} (its tokenizer is not "
                              f"there): run `{PREPARE} --num_shards {cfg.num_shards} --shard_index I` with this run's "
                              f"flags for each I first, with the same --cache_dir")
        tokenizer = tok.load(str(directory))
    inputs = Inputs(config, family, objective, tokenizer)
    slices.check(slices.choose(inputs.data_dir, cfg.num_shards, PREPARE) or [], inputs.params)
