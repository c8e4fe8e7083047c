"""Raw text -> tokenized -> packed blocks or lines, cached once per node and reused across runs."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets import Dataset, DatasetDict
from transformers import PreTrainedTokenizerBase

from dslm import dist
from dslm import tokenizer as tok
from dslm.config import DATA_SUFFIXES, ConfigError, DataConfig, RunConfig

CACHE_FORMAT = 1  # bump when the cached layout changes
STREAM_TOKENIZER_TEXTS = 100_000  # texts read from a stream to train a tokenizer


@dataclass
class Prepared:
    tokenizer: PreTrainedTokenizerBase
    train: Dataset | StreamBlocks  # a stream with --streaming
    validation: Dataset | None
    fingerprint: str  # of the raw data, tokenizer and preprocessing: names the cache


def builtin_texts() -> list[str]:
    """English text every Python install carries: the topic help of the standard library's pydoc."""
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)]


def _fingerprint(cfg: DataConfig, exact_source: bool) -> str:
    """Identify the raw data without reading all of it: its size and first and last MiB, and with
    `exact_source` also its path and modification time (and the built-in texts themselves)."""
    h = hashlib.sha256()
    if cfg.dataset_name:
        name = cfg.dataset_name if exact_source else Path(cfg.dataset_name).name
        h.update(f"hub:{name}:{cfg.dataset_config_name}".encode())
    elif cfg.train_file:
        for path in filter(None, (cfg.train_file, cfg.validation_file)):
            stat = Path(path).stat()
            if exact_source:
                h.update(f"{Path(path).resolve()}|{stat.st_mtime_ns}".encode())
            with open(path, "rb") as f:
                h.update(f"{stat.st_size}|".encode() + f.read(1 << 20))
                f.seek(max(0, stat.st_size - (1 << 20)))
                h.update(f.read(1 << 20) + b"\0")
    elif exact_source:
        for text in builtin_texts():
            h.update(text.encode())
    else:
        h.update(b"builtin")
    h.update(f"|{cfg.text_column}|{cfg.validation_split_percentage}|{cfg.line_by_line}".encode())
    return h.hexdigest()[:16]


def source_fingerprint(cfg: DataConfig) -> str:
    """Keys the caches: any edit of the data (size, time, sampled bytes) builds them anew."""
    return _fingerprint(cfg, exact_source=True)


def content_fingerprint(cfg: DataConfig) -> str:
    """Part of a run's identity: the same data copied elsewhere or touched is still the same run."""
    return _fingerprint(cfg, exact_source=False) + f"-{cfg.max_seq_length}"


def _pick_text_column(ds: Dataset, wanted: str | None, where: str) -> str:
    if wanted:
        if wanted not in ds.column_names:
            raise ConfigError(f"{where} has no column {wanted!r} (columns: {', '.join(ds.column_names)}): "
                              f"pass --text_column with one of them")
        return wanted
    if "text" in ds.column_names:
        return "text"
    strings = [name for name, feat in ds.features.items()
               if isinstance(feat, datasets.Value) and feat.dtype in ("string", "large_string")]
    if len(strings) == 1:
        return strings[0]
    raise ConfigError(f"{where} has no 'text' column and {len(strings)} string columns "
                      f"({', '.join(strings) or 'none'}): pass --text_column NAME")


def _load_file(path: str, cache_dir: Path, text_column: str | None) -> Dataset:
    from dslm import inputs

    builder = DATA_SUFFIXES[Path(path).suffix.lower()]
    try:
        with inputs.quiet_datasets():
            ds = datasets.load_dataset(builder, data_files={"train": path}, split="train",
                                       cache_dir=str(cache_dir / "datasets"))
    except Exception as exc:  # datasets raises many types for unreadable input
        if inputs.decode_error(exc):  # past the sampled ends of the file
            raise inputs.not_utf8(path, path, inputs.describe(inputs.decode_error(exc))) from None
        raise ConfigError(f"cannot read {path} as {builder} ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}): check the file's format") from None
    column = _pick_text_column(ds, text_column, path)
    return ds.select_columns([column]).rename_column(column, "text") if column != "text" else ds.select_columns(
        ["text"])


def _non_empty(texts: list[str], line_by_line: bool) -> list[str]:
    if line_by_line:
        return [line for text in texts for line in text.splitlines() if line.strip()]
    return [text for text in texts if text and text.strip()]


def load_corpus(config: RunConfig) -> DatasetDict:
    """Raw text splits with one 'text' column: files, a hub dataset, or the built-in corpus."""
    cfg = config.data
    validation = None
    if cfg.dataset_name:
        try:
            loaded = datasets.load_dataset(cfg.dataset_name, cfg.dataset_config_name,
                                           cache_dir=str(config.cache_dir / "datasets"))
        except Exception as exc:
            raise ConfigError(f"cannot load dataset {cfg.dataset_name!r} ({type(exc).__name__}): check the name, "
                              f"or use --train_file") from None
        if "train" not in loaded:
            raise ConfigError(f"dataset {cfg.dataset_name!r} has no train split (it has {', '.join(loaded)})")
        column = _pick_text_column(loaded["train"], cfg.text_column, cfg.dataset_name)
        train_texts = loaded["train"][column]
        if "validation" in loaded:
            validation = loaded["validation"][column]
    elif cfg.train_file:
        train_texts = _load_file(cfg.train_file, config.cache_dir, cfg.text_column)["text"]
        if cfg.validation_file:
            validation = _load_file(cfg.validation_file, config.cache_dir, cfg.text_column)["text"]
    else:
        train_texts = builtin_texts()
    train_texts = _non_empty([t for t in train_texts if isinstance(t, str)], cfg.line_by_line)
    if not train_texts:
        raise ConfigError("the training data has no text: give a file with non-empty text")
    if validation is not None:
        validation = _non_empty([t for t in validation if isinstance(t, str)], cfg.line_by_line)
        if not validation:
            raise ConfigError("the validation data has no text: give a file with non-empty text")
    elif cfg.validation_split_percentage > 0 and len(train_texts) > 1:
        # Like run_mlm.py: the first N% of the training data is held out.
        n_val = max(1, math.floor(len(train_texts) * cfg.validation_split_percentage / 100))
        validation, train_texts = train_texts[:n_val], train_texts[n_val:]
    splits = {"train": Dataset.from_dict({"text": train_texts})}
    if validation:
        splits["validation"] = Dataset.from_dict({"text": validation})
    return DatasetDict(splits)


def columns_for(objective: str, whole_word_mask: bool) -> list[str]:
    """What the objective's collator needs beyond input_ids."""
    if objective != "mlm":
        return ["input_ids"]
    return ["input_ids", "special_tokens_mask"] + (["offset_mapping"] if whole_word_mask else [])


def _features(columns: list[str]) -> datasets.Features:
    types = {"input_ids": datasets.Sequence(datasets.Value("int32")),
             "special_tokens_mask": datasets.Sequence(datasets.Value("int8")),
             "offset_mapping": datasets.Sequence(datasets.Sequence(datasets.Value("int32")))}
    return datasets.Features({name: types[name] for name in columns})


# Methods of a tokenizer whose work the Rust path below redoes: a class that overrides one in Python
# (remote code, a model-specific tokenizer) may change the ids, so it keeps going through __call__.
_CALL_METHODS = ("__call__", "_encode_plus", "_batch_encode_plus", "_convert_encoding")
_BASE_MODULES = ("transformers.tokenization_utils_base", "transformers.tokenization_utils_tokenizers",
                 "transformers.tokenization_utils_fast")
# Texts on which the Rust path must give __call__'s output before it is used: words, numbers,
# accents, CJK, emoji, odd whitespace, a control character and a special token written in the text.
_PROBE = ("Hello, world! 42 naïve CAFÉ", "  leading and  trailing  ", "日本語のテキスト 🙂", "a\tb\nc\u00a0d\u200be",
          "x", "{special} inside {special}")


class _Encoder:
    """texts -> the `columns` of each, exactly as `tokenizer(texts, ...)` gives them (and an EOS after
    each document where packing needs one and the tokenizer adds none).

    Two steps, so that the cache build can encode one batch (in Rust, without the GIL) while it
    converts the previous one: `encode`, then `rows` (per-text lists, as __call__) or `arrays`
    (Arrow list arrays). Where the tokenizer allows, `encode` is the Rust tokenizer itself: __call__
    would convert each Encoding into a dict of lists (token_type_ids and attention_mask too, which
    nothing here needs) and stack them into a BatchEncoding. Without offsets it is
    `encode_batch_fast`, which skips computing them.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, columns: list[str], *, line_by_line: bool,
                 max_seq_length: int) -> None:
        self.tokenizer, self.columns = tokenizer, columns
        self.line_by_line, self.max_seq_length = line_by_line, max_seq_length
        # Packed documents need a boundary: tokenizers that add no special tokens (GPT-2) get an EOS.
        self.add_eos = not line_by_line and tokenizer.eos_token_id is not None and not tokenizer(
            "a", add_special_tokens=True)["input_ids"].count(tokenizer.eos_token_id)
        self.extras = {"input_ids": tokenizer.eos_token_id, "special_tokens_mask": 1, "offset_mapping": (0, 0)}
        self.rust = self._rust()
        if self.rust is not None:
            special = (tokenizer.all_special_tokens or [""])[0]
            probe = [text.format(special=special) for text in _PROBE]
            if line_by_line:  # and one that truncation cuts
                probe.append(" ".join(["word"] * (2 * max_seq_length)))
            got = self.rows(self.encode(probe))
            rust, self.rust = self.rust, None
            if got == self.rows(self.encode(probe)):
                self.rust = rust  # else __call__ stays

    def _rust(self) -> Any:
        """A copy of the Rust tokenizer set up as __call__ sets it up, or None where __call__ must run."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            return None
        for name in _CALL_METHODS:
            owner = next((cls for cls in type(self.tokenizer).__mro__ if name in vars(cls)), None)
            if owner is not None and owner.__module__ not in _BASE_MODULES:
                return None
        from tokenizers import Tokenizer

        rust = Tokenizer.from_str(backend.to_str())  # a copy: these settings stay off the caller's tokenizer
        # As set_truncation_and_padding before each call: no padding; truncation only for line_by_line.
        rust.no_padding()
        if self.line_by_line:
            rust.enable_truncation(self.max_seq_length, stride=0, strategy="longest_first",
                                   direction=self.tokenizer.truncation_side)
        else:
            rust.no_truncation()
        rust.encode_special_tokens = bool(getattr(self.tokenizer, "split_special_tokens", False))
        return rust

    def encode(self, texts: list[str]) -> Any:
        if self.rust is None:
            return self.tokenizer(texts, truncation=self.line_by_line,
                                  max_length=self.max_seq_length if self.line_by_line else None,
                                  return_special_tokens_mask="special_tokens_mask" in self.columns,
                                  return_offsets_mapping="offset_mapping" in self.columns, verbose=False)
        if "offset_mapping" in self.columns or not hasattr(self.rust, "encode_batch_fast"):  # older tokenizers
            return self.rust.encode_batch(texts)
        return self.rust.encode_batch_fast(texts)

    def _column(self, encoded: Any, name: str) -> list[list]:
        if self.rust is None:
            rows = encoded[name]
        elif name == "input_ids":
            rows = [e.ids for e in encoded]
        elif name == "special_tokens_mask":
            rows = [e.special_tokens_mask for e in encoded]
        else:
            rows = [e.offsets for e in encoded]
        if self.add_eos:
            for row in rows:
                row.append(self.extras[name])
        return rows

    def rows(self, encoded: Any) -> dict[str, list]:
        return {name: self._column(encoded, name) for name in self.columns}

    def arrays(self, encoded: Any) -> dict[str, pa.Array]:
        return {name: _to_arrow(self._column(encoded, name), name) for name in self.columns}


def encoder(tokenizer: PreTrainedTokenizerBase, columns: list[str], *, line_by_line: bool,
            max_seq_length: int) -> Callable[[list[str]], dict[str, list]]:
    """texts -> the `columns` of each, as lists, exactly as `tokenizer(texts, ...)` gives them (see
    `_Encoder`): what the stream runs."""
    enc = _Encoder(tokenizer, columns, line_by_line=line_by_line, max_seq_length=max_seq_length)
    return lambda texts: enc.rows(enc.encode(texts))


ENCODE_BATCH_BYTES = 4 << 20  # text per encode call: enough to keep every core busy, while the
# batch's Rust Encodings (~100 bytes a token) stay around 100 MB
_FORKED = False  # set in a child forked after this module loaded: see _rust_threads


def _mark_forked() -> None:
    global _FORKED
    _FORKED = True


os.register_at_fork(after_in_child=_mark_forked)


@contextlib.contextmanager
def _rust_threads() -> Iterator[None]:
    """Let the Rust tokenizer encode on every core while this process builds the cache.

    dslm's CLI turns the tokenizers library's parallelism off for the whole process: a DataLoader
    worker forked after the Rust thread pool has run would wait on it forever. The library reads
    TOKENIZERS_PARALLELISM at each batch call, so it is on for the build only and restored after; a
    child forked later sees "false" again (or, if it was unset, tokenizers turns it off in the child
    itself). A process that is itself a fork may have inherited a used, threadless pool: it stays
    as it is. RAYON_NUM_THREADS caps the threads.
    """
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    if not _FORKED:
        os.environ["TOKENIZERS_PARALLELISM"] = "true"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def _text_batches(ds: Dataset, budget: int) -> Iterator[list[str]]:
    """The 'text' column, in order, in slices of about `budget` bytes (at least one text each)."""
    texts = ds.with_format("arrow")[:]["text"]  # zero-copy for an in-memory table
    ends = np.cumsum(pc.binary_length(texts).fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
    start = 0
    while start < len(texts):
        done = int(ends[start - 1]) if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, done + budget, side="right")))
        yield texts.slice(start, stop - start).to_pylist()
        start = stop


def _to_arrow(rows: list[list], name: str) -> pa.Array:
    """Per-text lists of one column -> an Arrow list array of `_features`' type, built from numpy."""
    lengths = np.fromiter(map(len, rows), np.int64, len(rows))
    offsets = np.zeros(len(rows) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = itertools.chain.from_iterable(rows)
    if name == "offset_mapping":  # (start, end) pairs: list<list<int32>>, as datasets stores tuples
        values = np.fromiter(itertools.chain.from_iterable(flat), np.int32, 2 * int(offsets[-1]))
        pairs = pa.ListArray.from_arrays(np.arange(0, len(values) + 1, 2, dtype=np.int32), values)
        return pa.ListArray.from_arrays(offsets, pairs)
    dtype = np.int8 if name == "special_tokens_mask" else np.int32
    return pa.ListArray.from_arrays(offsets, np.fromiter(flat, dtype, int(offsets[-1])))


def tokenize(ds: Dataset, tokenizer: PreTrainedTokenizerBase, columns: list[str], *, line_by_line: bool,
             max_seq_length: int, num_proc: int | None) -> Dataset:
    """The `columns` of every text, as an in-memory dataset (types of `_features`).

    One process, the Rust tokenizer on every core over large batches, Arrow arrays built from numpy
    (no datasets.map: its per-batch Python lists, writer and fingerprinting cost more than the
    conversion here). A thread encodes the next batch while this one converts the last.
    With `num_proc` > 1: that many processes (datasets.map forks them), one thread each.
    """
    enc = _Encoder(tokenizer, columns, line_by_line=line_by_line, max_seq_length=max_seq_length)
    if num_proc and num_proc > 1:
        return ds.map(lambda batch: enc.rows(enc.encode(batch["text"])), batched=True, batch_size=1000,
                      num_proc=num_proc, remove_columns=ds.column_names, features=_features(columns),
                      desc="tokenizing")
    chunks: dict[str, list[pa.Array]] = {name: [] for name in columns}
    batches = _text_batches(ds, ENCODE_BATCH_BYTES)
    with _rust_threads(), ThreadPoolExecutor(1) as pool:
        pending = pool.submit(enc.encode, next(batches, []))
        while pending is not None:
            encoded = pending.result()
            texts = next(batches, None)
            pending = pool.submit(enc.encode, texts) if texts is not None else None
            for name, array in enc.arrays(encoded).items():  # one Arrow chunk per batch: list offsets are int32
                chunks[name].append(array)
            del encoded
    schema = _features(columns).arrow_schema
    table = pa.table({name: pa.chunked_array(chunks[name], schema.field(name).type) for name in columns},
                     schema=schema)
    return Dataset(datasets.table.InMemoryTable(table))


def stream_texts(config: RunConfig) -> Iterator[str]:
    """One pass over the training texts without loading them all: for --streaming."""
    cfg = config.data
    if cfg.dataset_name:
        rows = datasets.load_dataset(cfg.dataset_name, cfg.dataset_config_name, split="train", streaming=True)
    elif cfg.train_file:
        builder = DATA_SUFFIXES[Path(cfg.train_file).suffix.lower()]
        rows = datasets.load_dataset(builder, data_files={"train": cfg.train_file}, split="train", streaming=True)
    else:
        rows = ({"text": text} for text in builtin_texts())
    column = cfg.text_column
    for row in _rows_or_encoding_error(rows, cfg.train_file):
        if column is None:
            strings = [k for k, v in row.items() if isinstance(v, str)]
            column = "text" if "text" in row else (strings[0] if len(strings) == 1 else None)
            if column is None:
                raise ConfigError(f"the training data has no 'text' column and {len(strings)} string columns: "
                                  f"pass --text_column NAME")
        yield from _non_empty([row.get(column) or ""], cfg.line_by_line)


def _rows_or_encoding_error(rows: Iterator[dict], path: str | None) -> Iterator[dict]:
    """A decode error deep in a streamed file (past the sampled ends) becomes the usual one-line error."""
    from dslm import inputs

    try:
        yield from rows
    except UnicodeDecodeError as exc:
        raise inputs.not_utf8(path or "the training data", path or "FILE", inputs.describe(exc)) from None
    except Exception as exc:
        if path is None or inputs.decode_error(exc) is None:
            raise
        raise inputs.not_utf8(path, path, inputs.describe(inputs.decode_error(exc))) from None


class StreamBlocks(torch.utils.data.IterableDataset):
    """Tokenize and pack on the fly; each rank (and DataLoader worker) reads every n-th text."""

    def __init__(self, config: RunConfig, tokenizer: PreTrainedTokenizerBase, columns: list[str]) -> None:
        self.config, self.columns = config, columns
        self.encode = encoder(tokenizer, columns, line_by_line=config.data.line_by_line,
                              max_seq_length=config.data.max_seq_length)
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """A resumed pass skips the `skip` samples (all ranks together) consumed before."""
        self.skip = skip

    def __iter__(self) -> Iterator[dict[str, list]]:
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        shards, shard = dist.world_size() * workers, dist.rank() * workers + worker
        texts = (t for i, t in enumerate(stream_texts(self.config)) if i % shards == shard)
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


def pack(ds: Dataset, block: int) -> Dataset:
    """Concatenate every token of the split and cut it into `block`-token rows.

    run_*lm.py group texts inside each map batch and drop the tail of every batch; this packs the
    whole split at once (zero-copy in Arrow), so only the final partial block is dropped.
    """
    table = ds.data.table
    columns = {}
    for name in ds.column_names:
        flat = pc.list_flatten(table.column(name)).combine_chunks()
        n_blocks = len(flat) // block
        columns[name] = pa.FixedSizeListArray.from_arrays(flat.slice(0, n_blocks * block), block)
    return Dataset(datasets.table.InMemoryTable(pa.table(columns)))


def _build(config: RunConfig, corpus: DatasetDict, tokenizer: PreTrainedTokenizerBase, columns: list[str],
           out: Path) -> None:
    cfg = config.data
    splits = {}
    for split, raw in corpus.items():
        ds = tokenize(raw, tokenizer, columns, line_by_line=cfg.line_by_line, max_seq_length=cfg.max_seq_length,
                      num_proc=cfg.preprocessing_num_workers)
        if not cfg.line_by_line:
            n_tokens = pc.sum(pc.list_value_length(ds.data.table.column("input_ids"))).as_py() or 0
            ds = pack(ds, cfg.max_seq_length)
            if len(ds) == 0:
                raise ConfigError(f"the {split} data has {n_tokens} tokens, fewer than one --max_seq_length block "
                                  f"of {cfg.max_seq_length}: give more text or a smaller --max_seq_length")
        splits[split] = ds
    DatasetDict(splits).save_to_disk(str(out))
    (out / "dslm_cache.json").write_text(json.dumps({"format": CACHE_FORMAT, "columns": columns}))


def tokenizer_cache(config: RunConfig) -> Path:
    """Trained tokenizers outlive one run's output dir: the same corpus keeps the same tokenizer."""
    if config.data.cache_dir:
        return Path(config.data.cache_dir)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dslm" / "tokenizers"


def _write_atomically(target: Path, write) -> None:
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    write(tmp)
    try:
        tmp.rename(target)
    except OSError:  # a node sharing this file system got there first
        shutil.rmtree(tmp, ignore_errors=True)


def _remove(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)


def prepare(config: RunConfig, family: str, objective: str) -> Prepared:
    """Tokenizer and tokenized splits, built by one rank per node and cached for later runs."""
    cfg = config.data
    source = source_fingerprint(cfg)
    cache = config.cache_dir
    tokenizer_source = config.model.tokenizer_name or config.model.model_name_or_path
    corpus: DatasetDict | None = None

    def get_corpus() -> DatasetDict:  # read by the tokenizer training and the tokenization: load once
        nonlocal corpus
        if corpus is None and cfg.streaming:  # only validation is cached; training text streams
            corpus = DatasetDict()
            if cfg.validation_file:
                column = _load_file(cfg.validation_file, cache, cfg.text_column)["text"]
                texts = _non_empty([t for t in column if isinstance(t, str)], cfg.line_by_line)
                corpus["validation"] = Dataset.from_dict({"text": texts})
        elif corpus is None:
            corpus = load_corpus(config)
        return corpus

    if tokenizer_source is None:
        key = hashlib.sha256(f"{source}|{family}|{config.model.vocab_size}".encode()).hexdigest()[:16]
        tokenizer_dir = tokenizer_cache(config) / f"tokenizer-{key}"
        if cfg.overwrite_cache and dist.local_rank() == 0:
            _remove(tokenizer_dir)
        dist.barrier()

        # WordPiece training breaks ties between merges in hash order, so two trainings on one
        # corpus can differ: one rank trains and every node receives its files, and the result is
        # kept per corpus so that later runs reuse it.
        files: dict[str, bytes] | tuple[str, str] | None = None
        if dist.rank() == 0:
            try:
                if not tokenizer_dir.exists():
                    if cfg.streaming:  # a sample of the stream is enough to learn a vocabulary
                        texts = list(itertools.islice(stream_texts(config), STREAM_TOKENIZER_TEXTS))
                    else:
                        texts = get_corpus()["train"]["text"]
                    batches = (texts[i:i + 1000] for i in range(0, len(texts), 1000))
                    trained = tok.train(family, batches, config.model.vocab_size)
                    _write_atomically(tokenizer_dir, lambda tmp: trained.save_pretrained(str(tmp)))
                files = {p.name: p.read_bytes() for p in tokenizer_dir.iterdir()}
            except ConfigError as exc:  # bad input: every rank stops with the same one line
                files = ("error", str(exc))
        files = dist.broadcast(files)
        if isinstance(files, tuple):
            raise ConfigError(files[1])
        if dist.local_rank() == 0 and not tokenizer_dir.exists():
            _write_atomically(tokenizer_dir, lambda tmp: [(tmp / n).write_bytes(b) for n, b in files.items()])
        dist.barrier()
        tokenizer_source = str(tokenizer_dir)
    tokenizer = tok.load(tokenizer_source, config.model.trust_remote_code)

    columns = columns_for(objective, config.objective.whole_word_mask)
    params = (f"{source}|{tok.fingerprint(tokenizer)}|{cfg.max_seq_length}|{cfg.line_by_line}|{columns}|"
              f"{cfg.streaming}|{CACHE_FORMAT}")
    fingerprint = hashlib.sha256(params.encode()).hexdigest()[:16]
    if cfg.streaming and not cfg.validation_file:  # nothing to cache
        return Prepared(tokenizer, StreamBlocks(config, tokenizer, columns), None, fingerprint)
    data_dir = cache / f"tokenized-{fingerprint}"
    if cfg.overwrite_cache and dist.local_rank() == 0:
        _remove(data_dir)
    dist.barrier()
    dist.build_once_per_node(data_dir, lambda out: _build(config, get_corpus(), tokenizer, columns, out),
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

