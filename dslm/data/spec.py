"""The data spec: training sources mixed by weight and named validation sets, read from a small YAML or
JSON file (--data_spec), or made from the plain flags when --validation_file names several sets.

    train:
      - {name: legal, path: corpora/legal/*.txt, sample_by: paragraph, weight: 0.7}
      - {name: replay, dataset: wikitext, dataset_config: wikitext-103-raw-v1, weight: 0.3}
    when_exhausted: cycle          # or stop
    validation:
      legal: corpora/legal-val.txt
      replay: {path: general-val.jsonl, text_column: body}

Everything is checked here, before any work: a mistake is one line naming the fix.
"""

from __future__ import annotations

import dataclasses
import glob
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dslm import config_file, inputs
from dslm.errors import ConfigError, suggest

if TYPE_CHECKING:
    from dslm.config import DataConfig

SAMPLE_BY = ("line", "paragraph", "document")  # datasets' text loader's choices
WHEN_EXHAUSTED = ("cycle", "stop")
TOP_KEYS = ("train", "validation", "when_exhausted")
SOURCE_KEYS = ("name", "path", "dataset", "dataset_config", "text_column", "sample_by", "weight")
VALIDATION_KEYS = ("path", "text_column", "sample_by")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # it becomes part of metric names: train/tokens_seen/<name>


@dataclass(frozen=True)
class Source:
    """One training source or validation set: a file or a glob of files, or a dataset."""

    name: str
    path: str | None = None
    dataset: str | None = None
    dataset_config: str | None = None
    text_column: str | None = None
    sample_by: str = "line"
    weight: float = 1.0

    def data_config(self, base: DataConfig, holdout: float) -> DataConfig:
        """The run's data settings with this source as the only training data, `holdout` percent held out."""
        return dataclasses.replace(base, train_file=self.path, dataset_name=self.dataset,
                                   dataset_config_name=self.dataset_config, text_column=self.text_column,
                                   sample_by=self.sample_by, validation_file=None, data_spec=None,
                                   validation_split_percentage=holdout)


@dataclass(frozen=True)
class DataSpec:
    train: tuple[Source, ...]
    validation: tuple[Source, ...]  # empty: each source's own held-out part, named after it
    when_exhausted: str = "cycle"

    @property
    def weights(self) -> list[float]:
        total = sum(s.weight for s in self.train)
        return [s.weight / total for s in self.train]


def files(pattern: str) -> list[str]:
    """The files of a path or a glob (sorted: the same order on every machine)."""
    if not any(c in pattern for c in "*?["):
        return [pattern]
    return sorted(p for p in glob.glob(pattern, recursive=True) if Path(p).is_file())


# The flags `load` reads: a run asks for its spec several times (the flags' check, the run's identity, the
# slices' check, the preparation), and each load checks every file of it, so the result is kept per process.
_FLAGS = ("data_spec", "train_file", "dataset_name", "dataset_config_name", "validation_file", "text_column",
          "sample_by")
_loaded: dict[tuple, DataSpec | None] = {}


def load(cfg: DataConfig) -> DataSpec | None:
    """The spec of --data_spec, or of --validation_file name=path pairs; None for plain single-source flags."""
    stamp = None
    if cfg.data_spec and Path(cfg.data_spec).is_file():  # an edited spec is read again
        stat = Path(cfg.data_spec).stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
    key = (stamp, *(getattr(cfg, name) for name in _FLAGS))
    if key not in _loaded:  # (a failed load raises and is not kept)
        _loaded[key] = _load(cfg)
    return _loaded[key]


def _load(cfg: DataConfig) -> DataSpec | None:
    if cfg.data_spec:
        return _from_file(cfg)
    pairs = validation_pairs(cfg.validation_file)
    if pairs is None:
        return None
    flag_source = {"path": cfg.train_file, "dataset": cfg.dataset_name, "dataset_config": cfg.dataset_config_name,
                   "text_column": cfg.text_column, "sample_by": cfg.sample_by}
    name = default_name(cfg.train_file, cfg.dataset_name) if (cfg.train_file or cfg.dataset_name) else "builtin"
    train = _source("--train_file", {"name": name, **flag_source}, check=False)
    validation = [_validation("--validation_file", name, {"path": path, "text_column": cfg.text_column,
                                                          "sample_by": cfg.sample_by}) for name, path in pairs]
    return DataSpec((train,), tuple(validation))


def validation_pairs(value: str | None) -> list[tuple[str, str]] | None:
    """`name=path,name=path` -> pairs; None for a single plain path (which may itself hold '=' or ',')."""
    if not value or "=" not in value or Path(value).exists():
        return None
    pairs, seen = [], set()
    for item in value.split(","):
        name, sep, path = item.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise ConfigError(f"--validation_file {value!r}: give one file, or name=path pairs separated by commas "
                              f"(e.g. legal=legal-val.txt,general=wiki-val.txt)")
        if name in seen:
            raise ConfigError(f"--validation_file names the validation set {name!r} twice: give each name once")
        seen.add(name)
        pairs.append((name, path))
    return pairs


def default_name(path: str | None, dataset: str | None) -> str:
    """A source's name when the spec gives none: the file's stem, a glob's folder, the dataset's last part."""
    if dataset:
        return Path(dataset.rstrip("/")).name
    parts = Path(path or "").parts
    plain = [p for p in parts if not any(c in p for c in "*?[")]
    if len(plain) == len(parts):
        return Path(path).stem
    return Path(*plain).name if plain else "source"


def _unknown(where: str, keys: Any, known: tuple[str, ...]) -> None:
    for key in keys:
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r}{suggest(str(key), known)}; the keys are "
                              f"{', '.join(known)}")


def _from_file(cfg: DataConfig) -> DataSpec:
    path = cfg.data_spec
    where = f"--data_spec {path}"
    if cfg.train_file or cfg.dataset_name or cfg.validation_file:
        raise ConfigError("--data_spec and --train_file/--dataset_name/--validation_file conflict: put every source "
                          "in the data spec")
    raw = config_file.parse(path, "--data_spec", "data spec")
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: the spec must be a mapping with the keys {', '.join(TOP_KEYS)}")
    _unknown(where, raw, TOP_KEYS)
    sources = raw.get("train")
    if not isinstance(sources, list) or not sources:
        raise ConfigError(f"{where}: 'train' must be a non-empty list of sources, each with a path or a dataset")
    train = [_source(f"{where} train[{i}]", s) for i, s in enumerate(sources)]
    names = [s.name for s in train]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice:
        raise ConfigError(f"{where}: two training sources are named {twice!r}: give each a distinct name")
    when = raw.get("when_exhausted", "cycle")
    if when not in WHEN_EXHAUSTED:
        raise ConfigError(f"{where}: when_exhausted {when!r}: use cycle (a source that runs out starts over) or stop "
                          f"(training ends when the first source runs out)")
    validation = raw.get("validation") or {}
    if not isinstance(validation, dict):
        raise ConfigError(f"{where}: 'validation' must map names to files, e.g. legal: legal-val.txt")
    sets = tuple(_validation(f"{where} validation", str(name), value) for name, value in validation.items())
    return DataSpec(tuple(train), sets, when)


def _source(where: str, raw: Any, check: bool = True) -> Source:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a source must be a mapping, e.g. {{path: corpus.txt, weight: 0.5}}")
    _unknown(where, raw, SOURCE_KEYS)
    path, dataset = raw.get("path"), raw.get("dataset")
    if check and bool(path) == bool(dataset):
        raise ConfigError(f"{where}: give a source either a path (a file or a glob) or a dataset")
    name = raw.get("name")
    name = str(name) if name is not None else default_name(path, dataset)
    if not NAME.fullmatch(name):
        raise ConfigError(f"{where}: the name {name!r} must be letters, digits, '_', '.' or '-' (it names metrics)")
    weight = raw.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
        raise ConfigError(f"{where}: weight {weight!r} must be a positive number (weights are relative: 0.7 and 0.3, "
                          f"or 7 and 3)")
    source = Source(name, str(path) if path else None, str(dataset) if dataset else None,
                    _optional_str(raw.get("dataset_config")), _optional_str(raw.get("text_column")),
                    raw.get("sample_by", "line"), float(weight))
    _check_files(where, source)
    return source


def _validation(where: str, name: str, value: Any) -> Source:
    if not NAME.fullmatch(name):
        raise ConfigError(f"{where}: the name {name!r} must be letters, digits, '_', '.' or '-' (it names metrics)")
    raw = {"path": value} if isinstance(value, str) else value
    if not isinstance(raw, dict) or not raw.get("path"):
        raise ConfigError(f"{where} {name!r}: give a file, e.g. {name}: {name}-val.txt, or {{path: ..., "
                          f"text_column: ...}}")
    _unknown(f"{where} {name!r}", raw, VALIDATION_KEYS)
    source = Source(name, str(raw["path"]), text_column=_optional_str(raw.get("text_column")),
                    sample_by=raw.get("sample_by") or "line")
    _check_files(f"{where} {name!r}", source)
    return source


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def check_sample_by(where: str, sample_by: Any, paths: list[str]) -> None:
    """`where` is the flag (--sample_by) or the spec's source."""
    said = where if where == "--sample_by" else f"{where}: sample_by"
    if sample_by not in SAMPLE_BY:
        raise ConfigError(f"{said} {sample_by!r}: use line, paragraph (blank-line separated) or document (the whole "
                          f"file)")
    if sample_by != "line" and any(inputs.DATA_SUFFIXES.get(Path(p).suffix.lower()) != "text" for p in paths):
        raise ConfigError(f"{said} {sample_by} applies to .txt files; other formats have one document per row: "
                          f"drop it")


def _check_files(where: str, source: Source) -> None:
    """Each file of the source exists and is readable text with a text column (cheap: see inputs)."""
    if source.path is None:
        check_sample_by(where, source.sample_by, [])
        return
    found = files(source.path)
    if not found:
        raise ConfigError(f"{where}: no file matches {source.path}: check the pattern")
    if len({Path(f).suffix.lower() for f in found}) > 1:
        raise ConfigError(f"{where}: {source.path} matches files of several types: give one type per source")
    check_sample_by(where, source.sample_by, found)
    label = where.removeprefix("--")
    for f in found if len(found) <= 2 else [found[0], found[-1]]:  # (the reader checks the rest as it goes)
        inputs.check_data_file(label, f, source.text_column)
