"""Where raw text comes from: files, a dataset, or the built-in corpus; and what identifies it."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from pathlib import Path

import datasets
from datasets import Dataset, DatasetDict

from dslm import inputs
from dslm.config import DataConfig, RunConfig
from dslm.errors import ConfigError, first_line


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


def string_columns(ds: Dataset) -> list[str]:
    return [name for name, feat in ds.features.items()
            if isinstance(feat, datasets.Value) and feat.dtype in ("string", "large_string")]


def load_file(path: str, cache_dir: Path, text_column: str | None) -> Dataset:
    """One file as a dataset with a single 'text' column."""
    builder = inputs.DATA_SUFFIXES[Path(path).suffix.lower()]
    try:
        with inputs.quiet_datasets():
            ds = datasets.load_dataset(builder, data_files={"train": path}, split="train",
                                       cache_dir=str(cache_dir / "datasets"))
    except Exception as exc:  # datasets raises many types for unreadable input
        if inputs.decode_error(exc):  # past the sampled ends of the file
            raise inputs.not_utf8(path, path, inputs.describe(inputs.decode_error(exc))) from None
        raise ConfigError(f"cannot read {path} as {builder} ({type(exc).__name__}: "
                          f"{first_line(exc)}): check the file's format") from None
    column = inputs.pick_text_column(ds.column_names, string_columns(ds), text_column, path)
    return ds.select_columns([column]).rename_column(column, "text") if column != "text" else ds.select_columns(
        ["text"])


def non_empty(texts: list[str], line_by_line: bool) -> list[str]:
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
        column = inputs.pick_text_column(loaded["train"].column_names, string_columns(loaded["train"]), cfg.text_column,
                                    cfg.dataset_name)
        train_texts = loaded["train"][column]
        if "validation" in loaded:
            validation = loaded["validation"][column]
    elif cfg.train_file:
        train_texts = load_file(cfg.train_file, config.cache_dir, cfg.text_column)["text"]
        if cfg.validation_file:
            validation = load_file(cfg.validation_file, config.cache_dir, cfg.text_column)["text"]
    else:
        train_texts = builtin_texts()
    train_texts = non_empty([t for t in train_texts if isinstance(t, str)], cfg.line_by_line)
    if not train_texts:
        raise ConfigError("the training data has no text: give a file with non-empty text")
    if validation is not None:
        validation = non_empty([t for t in validation if isinstance(t, str)], cfg.line_by_line)
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


def stream_texts(config: RunConfig) -> Iterator[str]:
    """One pass over the training texts without loading them all: for --streaming."""
    cfg = config.data
    if cfg.dataset_name:
        rows = datasets.load_dataset(cfg.dataset_name, cfg.dataset_config_name, split="train", streaming=True)
    elif cfg.train_file:
        builder = inputs.DATA_SUFFIXES[Path(cfg.train_file).suffix.lower()]
        rows = datasets.load_dataset(builder, data_files={"train": cfg.train_file}, split="train", streaming=True)
    else:
        rows = ({"text": text} for text in builtin_texts())
    column = cfg.text_column
    for row in _rows_or_encoding_error(rows, cfg.train_file):
        if column is None:
            strings = [k for k, v in row.items() if isinstance(v, str)]
            column = inputs.pick_text_column(list(row), strings, None, "the training data")
        yield from non_empty([row.get(column) or ""], cfg.line_by_line)


def _rows_or_encoding_error(rows: Iterator[dict], path: str | None) -> Iterator[dict]:
    """A decode error deep in a streamed file (past the sampled ends) becomes the usual one-line error."""
    try:
        yield from rows
    except UnicodeDecodeError as exc:
        raise inputs.not_utf8(path or "the training data", path or "FILE", inputs.describe(exc)) from None
    except Exception as exc:
        if path is None or inputs.decode_error(exc) is None:
            raise
        raise inputs.not_utf8(path, path, inputs.describe(inputs.decode_error(exc))) from None
