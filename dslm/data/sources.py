"""Where raw text comes from: files, a dataset, or the built-in corpus; and what identifies it."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
from datasets import Dataset

from dslm import inputs
from dslm.config import DataConfig, RunConfig
from dslm.data import spec
from dslm.errors import ConfigError, first_line


def builtin_texts() -> list[str]:
    """English text every Python install carries: the topic help of the standard library's pydoc."""
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)]


def _folder_identity(folder: Path, exact_source: bool) -> str:
    """A local dataset folder by its files: names and sizes, and with `exact_source` their times."""
    parts = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        parts.append(f"{path.relative_to(folder)}|{stat.st_size}" + (f"|{stat.st_mtime_ns}" if exact_source else ""))
    return "\n".join(parts)


def _builder_identity(cfg: DataConfig) -> str:
    """A hub dataset by datasets' own identity of it: its configuration id (which hashes the resolved data
    files, so a new revision of them is other data) and its builder's hash. The name alone where the
    builder cannot be made (loading then says why)."""
    try:
        with inputs.quiet_datasets():
            builder = datasets.load_dataset_builder(cfg.dataset_name, cfg.dataset_config_name)
        return f"{builder.config_id}|{builder.hash}"
    except Exception:  # no network, no such dataset: raw_splits reports it in one line
        return ""


def _fingerprint(cfg: DataConfig, exact_source: bool) -> str:
    """Identify the raw data without reading all of it: its size and first and last MiB, and with
    `exact_source` also its path and modification time (and the built-in texts themselves)."""
    h = hashlib.sha256()
    if cfg.dataset_name:
        name = cfg.dataset_name if exact_source else Path(cfg.dataset_name).name
        h.update(f"hub:{name}:{cfg.dataset_config_name}".encode())
        if Path(cfg.dataset_name).is_dir():  # a local folder: an edited file is other data
            h.update(_folder_identity(Path(cfg.dataset_name), exact_source).encode())
        elif exact_source:
            h.update(_builder_identity(cfg).encode())
    elif cfg.train_file:
        paths = [*spec.files(cfg.train_file), *filter(None, [cfg.validation_file])]
        for i, path in enumerate(paths):
            stat = Path(path).stat()
            if exact_source:
                h.update(f"{Path(path).resolve()}|{stat.st_mtime_ns}".encode())
            if 0 < i < len(paths) - 2:  # a glob's many files: by name and size (sampling each would read GBs)
                h.update(f"{Path(path).name}|{stat.st_size}|".encode())
                continue
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
    if cfg.sample_by != "line":  # (the default adds nothing: caches made before the choice existed stay valid)
        h.update(f"|{cfg.sample_by}".encode())
    return h.hexdigest()[:16]


def source_fingerprint(cfg: DataConfig) -> str:
    """Keys the caches: any edit of the data (size, time, sampled bytes) builds them anew."""
    return _fingerprint(cfg, exact_source=True)


def content_fingerprint(cfg: DataConfig) -> str:
    """Part of a run's identity: the same data copied elsewhere or touched is still the same run. A spec's
    run is its sources, their weights and names, and its validation sets."""
    data_spec = spec.load(cfg)
    if data_spec is None:
        return _fingerprint(cfg, exact_source=False) + f"-{cfg.max_seq_length}"
    h = hashlib.sha256(data_spec.when_exhausted.encode())
    holdout = 0.0 if data_spec.validation else cfg.validation_split_percentage
    for s in data_spec.train:
        h.update(f"|{s.name}|{s.weight}|{_fingerprint(s.data_config(cfg, holdout), exact_source=False)}".encode())
    for v in data_spec.validation:
        h.update(f"|val:{v.name}|{_fingerprint(v.data_config(cfg, 0.0), exact_source=False)}".encode())
    return h.hexdigest()[:16] + f"-{cfg.max_seq_length}"


@dataclass
class Raw:
    """One split's raw rows and the column holding their text: the Arrow files datasets wrote (or, for
    the built-in corpus, a small table in memory). Files are read as streams, never memory-mapped: a
    mapped file's pages stay resident and count against the process for as long as it maps them."""

    column: str
    rows: int
    files: list[str]
    table: pa.Table | None = None

    @classmethod
    def of(cls, ds: Dataset, column: str) -> Raw:
        if ds.cache_files:
            return cls(column, len(ds), [entry["filename"] for entry in ds.cache_files])
        return cls(column, len(ds), [], ds.data.table)

    def arrays(self) -> Iterator[pa.Array]:
        """The text column, record batch by record batch."""
        if self.table is not None:
            for batch in self.table.select([self.column]).to_batches():
                yield batch.column(0)
            return
        for path in self.files:
            with pa.OSFile(path) as f:
                for batch in pa.ipc.open_stream(f):
                    yield batch.column(self.column)

    def sample(self, n: int) -> list[str]:
        """`n` rows drawn the same way on every run (all of them when there are fewer), in one read."""
        picked = np.arange(self.rows) if self.rows <= n else np.sort(
            np.random.default_rng(0).choice(self.rows, n, replace=False))
        texts, offset = [], 0
        for array in self.arrays():
            lo, hi = np.searchsorted(picked, [offset, offset + len(array)])
            if hi > lo:
                texts += array.take(pa.array(picked[lo:hi] - offset)).to_pylist()
            offset += len(array)
        return [t for t in texts if isinstance(t, str) and t.strip()]


def prepared_splits(path: str, name: str | None, data_files: dict[str, list[str]] | None, cache_dir: Path,
                    **options: str) -> dict[str, tuple[list[str], int, pa.Schema]]:
    """datasets' builder converts the data into Arrow files in the cache (in bounded memory); each split's
    files, row count and schema. Not `load_dataset`: the Dataset it returns maps every file, and reading
    a file of small record batches through a map makes all of it resident."""
    builder = datasets.load_dataset_builder(path, name, data_files=data_files, cache_dir=str(cache_dir / "datasets"),
                                            **options)
    builder.download_and_prepare()
    splits = {}
    for split, info in (builder.info.splits or {}).items():
        pattern = re.compile(rf"{re.escape(builder.dataset_name)}-{re.escape(split)}(-\d{{5}}-of-\d{{5}})?\.arrow")
        files = sorted(str(f) for f in Path(builder.cache_dir).iterdir() if pattern.fullmatch(f.name))
        schema = pa.schema([])  # a split without rows
        if files:
            with pa.OSFile(files[0]) as f:
                schema = pa.ipc.open_stream(f).schema
        splits[split] = (files, info.num_examples, schema)
    return splits


def builder_options(path: str, sample_by: str) -> tuple[str, dict[str, str]]:
    """datasets' builder for a file (or glob) and its options: a text file's documents are its lines, its
    paragraphs or the whole file."""
    builder = inputs.DATA_SUFFIXES[Path(path).suffix.lower()]
    return builder, ({"sample_by": sample_by} if builder == "text" and sample_by != "line" else {})


def load_file(path: str, cache_dir: Path, text_column: str | None, sample_by: str = "line") -> Raw:
    """One file (or a glob of files), converted by datasets into Arrow files in the cache."""
    builder, options = builder_options(path, sample_by)
    try:
        with inputs.quiet_datasets():
            files, rows, schema = prepared_splits(builder, None, {"train": spec.files(path)}, cache_dir,
                                                  **options)["train"]
    except Exception as exc:  # datasets raises many types for unreadable input
        if inputs.decode_error(exc):  # past the sampled ends of the file
            raise inputs.not_utf8(path, path, inputs.describe(inputs.decode_error(exc))) from None
        raise ConfigError(f"cannot read {path} as {builder} ({type(exc).__name__}: "
                          f"{first_line(exc)}): check the file's format") from None
    return Raw(inputs.pick_text_column(schema.names, inputs.string_fields(schema), text_column, path), rows, files)


def split_lines(cfg: DataConfig) -> bool:
    """--line_by_line makes each line an example, unless --sample_by already made each document a paragraph or
    a whole file."""
    return cfg.line_by_line and cfg.sample_by == "line"


def non_empty(texts: list[str], line_by_line: bool) -> list[str]:
    if line_by_line:
        return [line for text in texts for line in text.splitlines() if line.strip()]
    return [text for text in texts if text and text.strip()]


def raw_splits(config: RunConfig, train: bool = True) -> dict[str, Raw]:
    """The raw training rows and, where given, validation rows: files, a dataset, or the built-in corpus.
    Nothing is read into memory: the units (texts or lines) are cut from these by `data.units`. Without
    `train` (the training text streams), only a validation file."""
    cfg = config.data
    if not train:
        return {"validation": load_file(cfg.validation_file, config.cache_dir, cfg.text_column, cfg.sample_by)} \
            if cfg.validation_file else {}
    if cfg.dataset_name:
        try:
            loaded = prepared_splits(cfg.dataset_name, cfg.dataset_config_name, None, config.cache_dir)
        except Exception as exc:
            raise ConfigError(f"cannot load dataset {cfg.dataset_name!r} ({type(exc).__name__}): check the name, "
                              f"or use --train_file") from None
        if "train" not in loaded:
            raise ConfigError(f"dataset {cfg.dataset_name!r} has no train split (it has {', '.join(loaded)})")
        schema = loaded["train"][2]
        column = inputs.pick_text_column(schema.names, inputs.string_fields(schema), cfg.text_column, cfg.dataset_name)
        return {split: Raw(column, loaded[split][1], loaded[split][0]) for split in ("train", "validation")
                if split in loaded}
    if cfg.train_file:
        raws = {"train": load_file(cfg.train_file, config.cache_dir, cfg.text_column, cfg.sample_by)}
        if cfg.validation_file:
            raws["validation"] = load_file(cfg.validation_file, config.cache_dir, cfg.text_column, cfg.sample_by)
        return raws
    return {"train": Raw.of(Dataset.from_dict({"text": builtin_texts()}), "text")}


def stream_dataset(config: RunConfig) -> datasets.IterableDataset:
    """The training rows as datasets' stream (a file of any format, or --dataset_name)."""
    cfg = config.data
    if cfg.dataset_name:
        return datasets.load_dataset(cfg.dataset_name, cfg.dataset_config_name, split="train", streaming=True)
    builder, options = builder_options(cfg.train_file, cfg.sample_by)
    return datasets.load_dataset(builder, data_files={"train": spec.files(cfg.train_file)}, split="train",
                                 streaming=True, **options)


def row_texts(config: RunConfig, rows: Iterable[dict]) -> Iterator[str]:
    """The text of each row ("" where it holds none), the column picked from the first row."""
    column = config.data.text_column
    for row in _rows_or_encoding_error(iter(rows), config.data.train_file):
        if column is None:
            column = inputs.row_text_column(row, None, "the training data")
        text = row.get(column)
        yield text if isinstance(text, str) else ""


def stream_rows(config: RunConfig) -> Iterator[str]:
    """The text of every training row, in order, without loading them all."""
    if not (config.data.dataset_name or config.data.train_file):
        return iter(builtin_texts())
    return row_texts(config, stream_dataset(config))


def stream_texts(config: RunConfig) -> Iterator[str]:
    """The non-empty units of the stream (a tokenizer's sample is drawn from its head)."""
    for row in stream_rows(config):
        yield from non_empty([row], split_lines(config.data))


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
