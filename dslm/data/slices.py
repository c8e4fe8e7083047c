"""The tokenized cache on disk: slices of Arrow stream files, written in bounded memory, read memory-mapped.

`dslm prepare --num_shards N --shard_index I` writes slice I of N (one machine each); a run without
those flags writes slice 0 of 1. Inside a slice, each of --preprocessing_num_workers processes
writes its own part of each split. Packed splits are stored one row per token and cut into blocks
when read, so the blocks are those of the whole split whatever the numbers of slices and workers.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
from datasets import Dataset

from dslm.data import encode
from dslm.data.pack import blocks, flat
from dslm.data.units import Counted, Span
from dslm.errors import ConfigError

CACHE_FORMAT = 2  # bump when the layout changes
META = "dslm_cache.json"
_NAME = re.compile(r"slice-(\d{5})-of-(\d{5})")


def name(index: int, num_shards: int) -> str:
    return f"slice-{index:05d}-of-{num_shards:05d}"


@dataclass
class Job:
    """What writing a slice needs: the counted raw splits, the units of each split, the encoder."""

    counted: dict[str, Counted]
    spans: dict[str, Span]
    encoder: encode.Encoder
    packed: bool
    params: str  # everything that shapes the tokens: slices of one set carry the same


def _schema(columns: list[str], packed: bool) -> pa.Schema:
    rows = encode.features(columns).arrow_schema
    return pa.schema([(f.name, f.type.value_type) for f in rows]) if packed else rows


def _write_piece(job: Job, span: Span, path: Path) -> int:
    """Units `span` encoded into one Arrow stream file; returns its token count."""
    schema = _schema(job.encoder.columns, job.packed)
    tokens = 0
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for arrays in encode.encoded(job.encoder, job.counted[span.source].read(span.start, span.stop)):
            batch = flat(arrays) if job.packed else pa.RecordBatch.from_pydict(arrays)
            writer.write_batch(pa.RecordBatch.from_arrays(
                [batch.column(n).cast(schema.field(n).type) for n in schema.names], schema=schema))
            tokens += len(arrays["input_ids"].flatten())
    return tokens


def write(out: Path, job: Job, index: int, num_shards: int, workers: int) -> None:
    """Slice `index` of `num_shards` into `out`, by `workers` processes."""
    out.mkdir(parents=True, exist_ok=True)
    work: list[list[tuple[str, Span, str]]] = [[] for _ in range(workers)]
    for split, span in job.spans.items():
        mine = span.part(index, num_shards)
        for w in range(workers):
            work[w].append((split, mine.part(w, workers), f"{split}-{w:05d}.arrow"))
    if workers == 1:
        tokens = [[_write_piece(job, span, out / file) for _, span, file in work[0]]]
    else:
        tokens = _in_processes(job, work, out)
    meta: dict[str, Any] = {"format": CACHE_FORMAT, "params": job.params, "index": index, "num_shards": num_shards,
                            "spans": {s: [sp.source, sp.start, sp.stop] for s, sp in job.spans.items()},
                            "columns": job.encoder.columns, "files": {}, "tokens": {}, "units": {}}
    for w, pieces in enumerate(work):
        for (split, span, file), n in zip(pieces, tokens[w], strict=True):
            meta["files"].setdefault(split, []).append(file)
            meta["tokens"][split] = meta["tokens"].get(split, 0) + n
            meta["units"][split] = meta["units"].get(split, 0) + span.stop - span.start
    (out / META).write_text(json.dumps(meta, indent=1))


def _in_processes(job: Job, work: list[list[tuple[str, Span, str]]], out: Path) -> list[list[int]]:
    """Each worker's pieces in a forked process (one Rust thread each: see encode._rust_threads)."""
    ctx = multiprocessing.get_context("fork")
    procs = []
    for w, pieces in enumerate(work):
        proc = ctx.Process(target=_child, args=(job, pieces, out, out / f".worker-{w}.json"), daemon=True)
        proc.start()
        procs.append(proc)
    results = []
    for w, proc in enumerate(procs):
        proc.join()
        report = out / f".worker-{w}.json"
        if not report.exists():
            raise RuntimeError(f"preprocessing worker {w} died (exit code {proc.exitcode}): is memory short? "
                               f"try fewer --preprocessing_num_workers")
        result = json.loads(report.read_text())
        report.unlink()
        if "error" in result:
            if result["error"] == "ConfigError":
                raise ConfigError(result["message"])
            raise RuntimeError(f"preprocessing worker {w} failed: {result['message']}")
        results.append(result["tokens"])
    return results


def _child(job: Job, pieces: list[tuple[str, Span, str]], out: Path, report: Path) -> None:
    try:
        result: dict[str, Any] = {"tokens": [_write_piece(job, span, out / file) for _, span, file in pieces]}
        code = 0
    except BaseException as exc:  # reported to the parent, which raises it there
        result, code = {"error": type(exc).__name__, "message": str(exc)}, 1
    report.write_text(json.dumps(result))
    os._exit(code)  # no atexit handlers of the parent (datasets, torch) in a forked child


def complete_sets(data_dir: Path) -> dict[int, dict[int, Path]]:
    """num_shards -> {index: directory} of the finished slices in `data_dir`."""
    found: dict[int, dict[int, Path]] = {}
    for path in sorted(data_dir.glob("slice-*-of-*")) if data_dir.is_dir() else []:
        match = _NAME.fullmatch(path.name)
        if match and (path / META).exists():
            found.setdefault(int(match[2]), {})[int(match[1])] = path
    return found


def choose(data_dir: Path, num_shards: int | None, prepare_command: str) -> list[Path] | None:
    """The slices a run reads: the set of `num_shards` if given, else the one complete set; None when
    there is none and the run builds its own."""
    sets = complete_sets(data_dir)
    if num_shards is None:
        complete = sorted(n for n, have in sets.items() if len(have) == n)
        if complete:
            num_shards = complete[0]
        elif sets:
            num_shards = max(sets)
        else:
            return None
    have = sets.get(num_shards, {})
    missing = [i for i in range(num_shards) if i not in have]
    if missing:
        shown = ", ".join(map(str, missing[:8])) + (", ..." if len(missing) > 8 else "")
        raise ConfigError(f"slice(s) {shown} of {num_shards} are missing in {data_dir}: run `{prepare_command} "
                          f"--num_shards {num_shards} --shard_index I` for each (same flags as this run)")
    return [have[i] for i in range(num_shards)]


def _mapped(path: Path) -> pa.Table:
    return pa.ipc.open_stream(pa.memory_map(str(path))).read_all()


def check(paths: list[Path], params: str) -> list[dict[str, Any]]:
    """The records of a set of slices, refused unless they belong together and to this run."""
    metas = [json.loads((p / META).read_text()) for p in paths]
    for path, meta in zip(paths, metas, strict=True):
        if meta.get("format") != CACHE_FORMAT or meta.get("params") != params:
            raise ConfigError(f"{path} was prepared with other flags or data (another tokenizer, length or source) "
                              f"than this run: remove it and prepare that slice again with this run's flags")
        if meta["spans"] != metas[0]["spans"]:
            raise ConfigError(f"{path} was cut from another version of the data than {paths[0]}: prepare every slice "
                              f"again from the same data")
    return metas


def load(paths: list[Path], params: str, block: int | None) -> dict[str, Dataset]:
    """The splits of a set of slices (checked); packed into `block`-token rows unless `block` is None
    (--line_by_line)."""
    metas = check(paths, params)
    splits = {}
    for split in metas[0]["spans"]:
        files = [p / f for p, m in zip(paths, metas, strict=True) for f in m["files"][split]]
        if block is None:
            parts = [Dataset.from_file(str(f)) for f in files]
            splits[split] = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
            continue
        table = blocks((_mapped(f) for f in files), block)
        if table.num_rows == 0:
            n_tokens = sum(m["tokens"][split] for m in metas)
            raise ConfigError(f"the {split} data has {n_tokens} tokens, fewer than one --max_seq_length block of "
                              f"{block}: give more text or a smaller --max_seq_length")
        # A fingerprint of our own: datasets would make one by hashing every row of the table.
        key = hashlib.sha256(f"{params}|{split}|{block}|{[p.name for p in paths]}".encode()).hexdigest()[:16]
        splits[split] = Dataset(datasets.table.InMemoryTable(table), fingerprint=key)
    return splits
