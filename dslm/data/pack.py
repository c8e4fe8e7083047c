"""Packing: every token of a split, concatenated and cut into blocks of one length."""

from __future__ import annotations

import datasets
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset


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
