"""A >= 50 MB English-ish corpus built from text that every Python install carries.

Documents, in this order:
- each topic of `pydoc_data.topics` (the help text of the language reference), one document per topic;
- each module of the standard library (every `*.py` under `sysconfig.get_paths()["stdlib"]`, sorted
  by path, site-packages left out, files that do not parse skipped): one document per module, made
  of its module, class and function docstrings (`ast.get_docstring`, cleaned), in source order,
  separated by blank lines. A module is an article-sized document (about 1.3 KB on average), like
  the documents of a pretraining corpus.

That base (about 2.7 MB on CPython 3.11) is repeated, whole, until the corpus holds at least
`--min_mb` MB of UTF-8 text. The content depends only on the Python install, so it is the same on
every run; it is written once, as a Parquet file with one `text` column (which `dslm prepare
--train_file` can read too), to `$XDG_CACHE_HOME/dslm/bench/` (default `~/.cache/dslm/bench/`),
keyed by the Python version and the size.

    python bench/corpus.py [--min_mb 50]     # builds the file if needed and prints its path
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import os
import sys
import sysconfig
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

CORPUS_VERSION = 1  # bump when the recipe changes, so old cached files are not reused


def base_documents() -> list[str]:
    """pydoc topics, then one document per stdlib module: its docstrings, in source order."""
    from pydoc_data.topics import topics

    docs = [topics[name] for name in sorted(topics)]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(p for p in stdlib.rglob("*.py") if "site-packages" not in p.relative_to(stdlib).parts):
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):  # the test suite ships files that are broken on purpose
            continue
        # ast.walk is breadth-first; sort by line so that a document reads in source order.
        nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
        nodes.sort(key=lambda n: n.lineno)
        parts = [ast.get_docstring(n) for n in [tree, *nodes]]
        text = "\n\n".join(p.strip() for p in parts if p and p.strip())
        if text:
            docs.append(text)
    return docs


def default_path(min_mb: int) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dslm" / "bench"
    key = hashlib.sha256(f"{CORPUS_VERSION}|{sys.version}|{min_mb}".encode()).hexdigest()[:12]
    return cache / f"corpus-{min_mb}mb-{key}.parquet"


def build(min_mb: int = 50, path: Path | None = None) -> Path:
    """The corpus file, written on the first call and reused after."""
    path = path or default_path(min_mb)
    if path.exists():
        return path
    base = base_documents()
    base_bytes = sum(len(d.encode()) for d in base)
    copies = -(-min_mb * 1_000_000 // base_bytes)  # whole copies: every document is repeated equally often
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    pq.write_table(pa.table({"text": pa.array(base * copies, pa.large_string())}), tmp)
    tmp.rename(path)  # atomic: a reader never sees half a file
    return path


def load(min_mb: int = 50) -> pa.Table:
    """The corpus as an Arrow table with one `text` column."""
    return pq.read_table(build(min_mb))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--min_mb", type=int, default=50, help="smallest corpus size, in MB of UTF-8 text")
    args = parser.parse_args()
    path = build(args.min_mb)
    table = pq.read_table(path)
    size = sum(len(t.encode()) for t in table.column("text").to_pylist())
    print(f"{path}: {table.num_rows} documents, {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
