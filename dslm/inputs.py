"""Cheap checks of the user's files and output directory, run before any expensive work.

Each check reads little (a file's first and last MiB, one row, a file-system's free space) so a
50 GB corpus is not read twice, and each failure is a `ConfigError`: one line naming the problem
and the fix.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dslm.errors import ConfigError, first_line

# File suffix -> the datasets builder that reads it.
DATA_SUFFIXES = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".csv": "csv",
                 ".parquet": "parquet"}
SAMPLE = 1 << 20  # bytes read from each end of a file to check its encoding
TEXT_BUILDERS = {"text", "json", "csv"}  # parquet stores its strings in its own (binary) format
MIN_FREE_BYTES = 1 << 20  # room for the run's first small files: less means the file system is full


def check_data_file(flag: str, path: str, text_column: str | None = None) -> None:
    """A training or validation file: exists, is a readable non-empty file of a known type, UTF-8 text
    where the format is text, and has a text column."""
    p = Path(path)
    if not path.strip():
        raise ConfigError(f"--{flag} is empty: give a file path")
    if not p.exists():
        raise ConfigError(f"--{flag} {path}: no such file; check the path")
    if p.is_dir():
        raise ConfigError(f"--{flag} {path} is a directory: give a file")
    if p.suffix.lower() not in DATA_SUFFIXES:
        raise ConfigError(f"--{flag} {path}: unsupported file type {p.suffix!r}; use one of "
                          f"{', '.join(sorted(DATA_SUFFIXES))}")
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(SAMPLE)
            f.seek(max(len(head), size - SAMPLE))  # the tail, without reading the head twice
            tail = f.read(SAMPLE)
    except OSError as exc:
        fix = (f"check its permissions, e.g. chmod a+r {path}" if exc.errno in (errno.EACCES, errno.EPERM)
               else "check the file and its file system")
        raise ConfigError(f"--{flag} {path} cannot be read ({exc.strerror}): {fix}") from None
    if size == 0:
        raise ConfigError(f"--{flag} {path} is empty: give a file with text")
    builder = DATA_SUFFIXES[p.suffix.lower()]
    if builder in TEXT_BUILDERS:
        check_utf8(flag, path, head, tail, tail_offset=size - len(tail))
    if builder == "json" and head.lstrip().startswith(b"[") and size > SAMPLE:
        return  # one JSON array: its first row means parsing all of it; the loader checks the column
    check_text_column(flag, path, builder, text_column)


def not_utf8(label: str, path: str, detail: str) -> ConfigError:
    """`label` names the file as the user gave it (with its flag when known)."""
    return ConfigError(f"{label} is not UTF-8 text ({detail}): convert it, e.g. "
                       f"iconv -f LATIN1 -t UTF-8 {path} > {Path(path).with_suffix('.utf8' + Path(path).suffix)}")


def check_utf8(flag: str, path: str, head: bytes, tail: bytes, tail_offset: int) -> None:
    """Decode the first and last MiB: a wrong encoding almost always shows there, and a decode error
    deeper in the file is still caught when the data is loaded (see `decode_error`)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        decoder.decode(head, final=not tail)
    except UnicodeDecodeError as exc:
        raise not_utf8(f"--{flag} {path}", path, f"byte 0x{head[exc.start]:02x} at offset {exc.start}") from None
    if not tail:
        return
    # The tail may start inside a character: skip at most 3 continuation bytes.
    skip = next((i for i in range(min(3, len(tail))) if tail[i] & 0xC0 != 0x80), min(3, len(tail)))
    try:
        codecs.getincrementaldecoder("utf-8")().decode(tail[skip:], final=True)
    except UnicodeDecodeError as exc:
        offset = tail_offset + skip + exc.start
        raise not_utf8(f"--{flag} {path}", path, f"byte 0x{tail[skip + exc.start]:02x} at offset {offset}") from None


def describe(error: UnicodeDecodeError) -> str:
    return f"byte 0x{error.object[error.start]:02x}: {error.reason}"


def decode_error(exc: BaseException) -> UnicodeDecodeError | None:
    """The UnicodeDecodeError behind an error that datasets raised while loading, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UnicodeDecodeError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """datasets logs a failed read before raising it; dslm reports the failure itself, in one line."""
    import datasets

    level = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)


def first_row(path: str, builder: str) -> dict | None:
    """The file's first row (or, for parquet, one of its shape), read as cheaply as the format allows:
    datasets' streaming reader takes seconds to start, a third of dslm's start-up."""
    if builder == "text":
        return {"text": ""}  # one column, "text", whatever the lines hold
    if builder == "parquet":
        import pyarrow.parquet as pq

        schema = pq.read_schema(path)  # the footer only
        strings = string_fields(schema)
        return {f.name: "" if f.name in strings else None for f in schema}
    if builder == "json":
        with open(path, "rb") as f:
            line = next((ln for ln in f if ln.strip()), b"")
        try:
            row = json.loads(line)
            if isinstance(row, dict):  # JSON Lines: one object a line
                return row
        except ValueError:
            pass  # a JSON array or a malformed file: datasets reads it and names the problem
    import datasets

    with quiet_datasets():
        rows = datasets.load_dataset(builder, data_files={"train": path}, split="train", streaming=True)
        return next(iter(rows), None)


def check_text_column(flag: str, path: str, builder: str, text_column: str | None) -> None:
    """The column the text will be read from exists (picked by `pick_text_column`, as loading picks it)."""
    try:
        row = first_row(path, builder)
    except Exception as exc:  # datasets and pyarrow raise many types for a malformed file
        if decode_error(exc):
            raise not_utf8(f"--{flag} {path}", path, describe(decode_error(exc))) from None
        raise ConfigError(f"--{flag} {path} cannot be read as {builder} ({type(exc).__name__}: "
                          f"{first_line(exc, 200)}): check the file's format") from None
    if row is None:
        raise ConfigError(f"--{flag} {path} holds no rows: give a file with text")
    row_text_column(row, text_column, f"--{flag} {path}")


def string_fields(schema: Any) -> list[str]:
    """The names of an Arrow schema's string columns."""
    import pyarrow as pa

    return [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]


def row_text_column(row: dict, wanted: str | None, where: str) -> str:
    """`pick_text_column` for a row read as a dict: its string values are the string columns."""
    return pick_text_column(list(row), [name for name, value in row.items() if isinstance(value, str)], wanted, where)


def pick_text_column(columns: list[str], strings: list[str], wanted: str | None, where: str) -> str:
    """The column that holds the text: `wanted` if given, else "text", else the only string column.

    Every reader of text (the start-up check, the cache build, a stream) picks it here.
    """
    if wanted:
        if wanted not in columns:
            raise ConfigError(f"{where} has no column {wanted!r} (columns: {', '.join(columns)}): "
                              f"pass --text_column with one of them")
        return wanted
    if "text" in columns:
        return "text"
    if len(strings) == 1:
        return strings[0]
    raise ConfigError(f"{where} has no 'text' column and {len(strings)} string columns "
                      f"({', '.join(strings) or 'none'}): pass --text_column NAME")


def existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(flag: str, path: Path, min_free: int = MIN_FREE_BYTES) -> None:
    """`path` (or the directory that will hold it) accepts files and has a little free space.

    Checked with a real write of a few KiB, not os.access: root passes os.access where the write
    fails, and a full file system still accepts an empty file.
    """
    where = existing_ancestor(path)
    if not where.is_dir():
        raise ConfigError(f"--{flag} {path}: {where} is a file, not a directory: choose another --{flag}")
    try:
        with tempfile.NamedTemporaryFile(dir=where, prefix=".dslm-write-test-") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        reason = {errno.EROFS: "is on a read-only file system", errno.ENOSPC: "is on a full file system",
                  errno.EDQUOT: "is over its disk quota",
                  errno.EACCES: "is not writable by this user"}.get(exc.errno, f"is not writable ({exc.strerror})")
        raise ConfigError(f"--{flag} {path} {reason}: choose another --{flag}") from None
    free = shutil.disk_usage(where).free
    if free < min_free:
        raise ConfigError(f"--{flag} {path}: only {free / 2**20:.1f} MiB free on its file system (dslm needs at least "
                          f"{min_free >> 20} MiB): free some space or choose another --{flag}")
