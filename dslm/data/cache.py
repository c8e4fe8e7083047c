"""Tokenized splits, built once (per node, or per slice by `dslm prepare`) and cached, keyed by
everything that shapes them."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from dslm import atomic, dist
from dslm import tokenizer as tok
from dslm.config import RunConfig
from dslm.data import encode, slices, sources, spec, units
from dslm.data.mixture import MixedDataset, Mixture
from dslm.data.stream import MixedStream, StreamBlocks
from dslm.errors import ConfigError

PREPARE = "dslm prepare"


@dataclass
class Prepared:
    tokenizer: PreTrainedTokenizerBase
    train: Dataset | StreamBlocks | MixedDataset  # a stream with --streaming
    validation: Dataset | None  # the only validation set, or the first named one
    fingerprint: str  # of the raw data, tokenizer and preprocessing: names the cache
    mixture: Mixture | None = None  # several training sources (--data_spec)
    named: dict[str, Dataset] = field(default_factory=dict)  # named validation sets, in the spec's order

    def eval_sets(self) -> dict[str, Dataset]:
        """Each validation set by name ("" for the one unnamed set of the plain flags)."""
        if self.named:
            return self.named
        return {"": self.validation} if self.validation is not None else {}


def tokenizer_dir(config: RunConfig, family: str, source: str) -> Path:
    """Where the tokenizer trained for this corpus is kept."""
    d = config.data
    key = hashlib.sha256(f"{source}|{family}|{config.model.vocab_size}|{d.tokenizer_train_samples}".encode())
    return tok.cache_root(d.cache_dir) / f"tokenizer-{key.hexdigest()[:16]}"


def tokenizer_sample(config: RunConfig, n: int, raw: dict[str, sources.Raw] | None = None) -> list[str]:
    """A bounded sample, the same on every run: a vocabulary needs far less than a pretraining corpus."""
    if config.data.streaming:
        return list(itertools.islice(sources.stream_texts(config), n))
    return (raw or sources.raw_splits(config))["train"].sample(n)


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
        return tokenizer_sample(self.config, self.config.data.tokenizer_train_samples, self.raw)

    def job(self) -> slices.Job:
        cfg = self.config.data
        counted = {name: units.count(raw, sources.split_lines(cfg)) for name, raw in self.raw.items()}
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
    data_spec = spec.load(cfg)
    configs = source_configs(config, data_spec) if data_spec else [config]
    if tokenizer is None:
        directory = tokenizer_dir(config, family, corpus_key(configs))
        if not directory.exists():
            raise ConfigError(f"no slice of {cfg.num_shards} is prepared in {config.cache_dir} (its tokenizer is not "
                              f"there): run `{PREPARE} --num_shards {cfg.num_shards} --shard_index I` with this run's "
                              f"flags for each I first, with the same --cache_dir")
        tokenizer = tok.load(str(directory))
    for c in configs:
        inputs = Inputs(c, family, objective, tokenizer)
        slices.check(slices.choose(inputs.data_dir, cfg.num_shards, PREPARE) or [], inputs.params)


def source_configs(config: RunConfig, data_spec: spec.DataSpec) -> list[RunConfig]:
    """One run config per training source: each is prepared and cached on its own, so a new weight or another
    mix of the same sources tokenizes nothing again. Without validation sets in the spec, each source holds
    out its own part (--validation_split_percentage), which becomes a validation set named after it."""
    holdout = 0.0 if data_spec.validation else config.data.validation_split_percentage
    return [dataclasses.replace(config, data=s.data_config(config.data, holdout)) for s in data_spec.train]


def validation_config(config: RunConfig, source: spec.Source) -> RunConfig:
    """A named validation set, prepared whole as the training text of a config of its own."""
    data = dataclasses.replace(source.data_config(config.data, 0.0), streaming=False, num_shards=None,
                               shard_index=None, max_train_samples=config.data.max_eval_samples)
    return dataclasses.replace(config, data=data)


def prepare_slices(config: RunConfig, family: str, objective: str,
                   tokenizer: PreTrainedTokenizerBase | None = None) -> list[dict[str, Any]]:
    """`prepare_slice` of the one source, or of every training source of the spec (one tokenizer for all)."""
    data_spec = spec.load(config.data)
    if data_spec is None:
        return [prepare_slice(config, family, objective, tokenizer)]
    configs = source_configs(config, data_spec)
    tokenizer = tokenizer or mixture_tokenizer(config, configs, family)
    return [prepare_slice(c, family, objective, tokenizer) for c in configs]


def corpus_key(configs: list[RunConfig]) -> str:
    """What a tokenizer trained on the corpus is keyed by: its sources' identities (one source: its own, as
    Inputs keys it)."""
    return "+".join(sources.source_fingerprint(c.data) for c in configs)


def mixture_tokenizer(config: RunConfig, configs: list[RunConfig], family: str) -> PreTrainedTokenizerBase:
    """A tokenizer trained once on an equal share of every source's sample (not on the weights: a new weight
    must not change the ids)."""
    n = max(1, config.data.tokenizer_train_samples // len(configs))
    return tok.train_once(tokenizer_dir(config, family, corpus_key(configs)), family, config.model.vocab_size,
                          lambda: [text for c in configs for text in tokenizer_sample(c, n)],
                          overwrite=config.data.overwrite_cache)


def prepare_mixture(config: RunConfig, data_spec: spec.DataSpec, family: str, objective: str,
                    tokenizer: PreTrainedTokenizerBase | None = None) -> Prepared:
    """Every training source and validation set of the spec, each prepared (and cached) as `prepare` does one."""
    configs = source_configs(config, data_spec)
    tokenizer = tokenizer or mixture_tokenizer(config, configs, family)
    parts = [prepare(c, family, objective, tokenizer) for c in configs]
    if data_spec.validation:
        named = {v.name: prepare(validation_config(config, v), family, objective, tokenizer).train
                 for v in data_spec.validation}
    else:
        named = {s.name: p.validation for s, p in zip(data_spec.train, parts, strict=True) if p.validation is not None}
    names, weights = tuple(s.name for s in data_spec.train), tuple(data_spec.weights)
    if config.data.streaming:
        train: Any = MixedStream(config, [p.train for p in parts], weights)
        mix = Mixture(names, weights, data_spec.when_exhausted)
    else:
        train = MixedDataset([p.train for p in parts])
        mix = Mixture(names, weights, data_spec.when_exhausted, tuple(len(p.train) for p in parts))
    key = "|".join([p.fingerprint for p in parts] + [f"{n}={len(v)}" for n, v in named.items()])
    fingerprint = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Prepared(tokenizer, train, next(iter(named.values()), None), fingerprint, mix, named)


def prepare_any(config: RunConfig, family: str, objective: str,
                tokenizer: PreTrainedTokenizerBase | None = None) -> Prepared:
    """The run's data: one source (`prepare`) or a spec's sources and validation sets (`prepare_mixture`)."""
    data_spec = spec.load(config.data)
    if data_spec is None:
        return prepare(config, family, objective, tokenizer)
    return prepare_mixture(config, data_spec, family, objective, tokenizer)
