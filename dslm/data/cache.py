"""Tokenized splits, built by one rank per node and cached, keyed by everything that shapes them."""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import datasets
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict
from transformers import PreTrainedTokenizerBase

from dslm import atomic, dist
from dslm import tokenizer as tok
from dslm.config import RunConfig
from dslm.data import encode, sources
from dslm.data.pack import pack
from dslm.data.stream import StreamBlocks
from dslm.errors import ConfigError

CACHE_FORMAT = 1  # bump when the cached layout changes
STREAM_TOKENIZER_TEXTS = 100_000  # texts read from a stream to train a tokenizer


@dataclass
class Prepared:
    tokenizer: PreTrainedTokenizerBase
    train: Dataset | StreamBlocks  # a stream with --streaming
    validation: Dataset | None
    fingerprint: str  # of the raw data, tokenizer and preprocessing: names the cache


def _build(config: RunConfig, corpus: DatasetDict, tokenizer: PreTrainedTokenizerBase, columns: list[str],
           out: Path) -> None:
    cfg = config.data
    splits = {}
    for split, raw in corpus.items():
        ds = encode.tokenize(raw, tokenizer, columns, line_by_line=cfg.line_by_line,
                             max_seq_length=cfg.max_seq_length, num_proc=cfg.preprocessing_num_workers)
        if not cfg.line_by_line:
            n_tokens = pc.sum(pc.list_value_length(ds.data.table.column("input_ids"))).as_py() or 0
            ds = pack(ds, cfg.max_seq_length)
            if len(ds) == 0:
                raise ConfigError(f"the {split} data has {n_tokens} tokens, fewer than one --max_seq_length block "
                                  f"of {cfg.max_seq_length}: give more text or a smaller --max_seq_length")
        splits[split] = ds
    DatasetDict(splits).save_to_disk(str(out))
    (out / "dslm_cache.json").write_text(json.dumps({"format": CACHE_FORMAT, "columns": columns}))


class _Corpus:
    """The raw text, read at most once: by the tokenizer training and by the cache build."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self._splits: DatasetDict | None = None

    def splits(self) -> DatasetDict:
        cfg = self.config.data
        if self._splits is None and cfg.streaming:  # only validation is cached; training text streams
            self._splits = DatasetDict()
            if cfg.validation_file:
                column = sources.load_file(cfg.validation_file, self.config.cache_dir, cfg.text_column)["text"]
                texts = sources.non_empty([t for t in column if isinstance(t, str)], cfg.line_by_line)
                self._splits["validation"] = Dataset.from_dict({"text": texts})
        elif self._splits is None:
            self._splits = sources.load_corpus(self.config)
        return self._splits

    def tokenizer_texts(self) -> list[str]:
        if self.config.data.streaming:  # a sample of the stream is enough to learn a vocabulary
            return list(itertools.islice(sources.stream_texts(self.config), STREAM_TOKENIZER_TEXTS))
        return self.splits()["train"]["text"]


def prepare(config: RunConfig, family: str, objective: str,
            tokenizer: PreTrainedTokenizerBase | None = None) -> Prepared:
    """Tokenized splits with the given tokenizer, or with one trained on the corpus (None)."""
    cfg = config.data
    source = sources.source_fingerprint(cfg)
    corpus = _Corpus(config)
    if tokenizer is None:
        key = hashlib.sha256(f"{source}|{family}|{config.model.vocab_size}".encode()).hexdigest()[:16]
        tokenizer = tok.train_once(tok.cache_root(cfg.cache_dir) / f"tokenizer-{key}", family,
                                   config.model.vocab_size, corpus.tokenizer_texts, overwrite=cfg.overwrite_cache)

    columns = encode.columns_for(objective, config.objective.whole_word_mask)
    params = (f"{source}|{tok.fingerprint(tokenizer)}|{cfg.max_seq_length}|{cfg.line_by_line}|{columns}|"
              f"{cfg.streaming}|{CACHE_FORMAT}")
    fingerprint = hashlib.sha256(params.encode()).hexdigest()[:16]
    if cfg.streaming and not cfg.validation_file:  # nothing to cache
        return Prepared(tokenizer, StreamBlocks(config, tokenizer, columns), None, fingerprint)
    data_dir = config.cache_dir / f"tokenized-{fingerprint}"
    if cfg.overwrite_cache and dist.local_rank() == 0 and data_dir.exists():
        atomic.remove(data_dir)
    dist.barrier()
    dist.build_once_per_node(data_dir, lambda out: _build(config, corpus.splits(), tokenizer, columns, out),
                             "tokenized data")
    splits = datasets.load_from_disk(str(data_dir))
    validation = splits.get("validation")
    if validation is not None and cfg.max_eval_samples:
        validation = validation.select(range(min(cfg.max_eval_samples, len(validation))))
    if cfg.streaming:
        return Prepared(tokenizer, StreamBlocks(config, tokenizer, columns), validation, fingerprint)
    train = splits["train"]
    if cfg.max_train_samples:
        train = train.select(range(min(cfg.max_train_samples, len(train))))
    return Prepared(tokenizer, train.with_format("python"), validation, fingerprint)
