"""Packing: every token of a split, concatenated in order and cut into blocks of one length."""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa


def flat(arrays: dict[str, pa.Array]) -> pa.RecordBatch:
    """Per-text list arrays -> one row per token (what packed slices store)."""
    return pa.RecordBatch.from_pydict({name: array.flatten() for name, array in arrays.items()})


def blocks(tables: Iterable[pa.Table], block: int) -> pa.Table:
    """The tokens of `tables` (one row per token, in order) as `block`-token rows.

    run_*lm.py group texts inside each map batch and drop the tail of every batch; here the whole
    split is one sequence, so only its final partial block is dropped, however many slices and files
    it was written in. The blocks are views of the (memory-mapped) tables: only a block that straddles
    two record batches is copied.
    """
    out: list[pa.RecordBatch] = []
    carry: pa.Table | None = None
    for table in tables:
        for batch in table.to_batches():
            if carry is not None:
                need = block - carry.num_rows
                if batch.num_rows < need:
                    carry = pa.concat_tables([carry, pa.Table.from_batches([batch])])
                    continue
                joined = pa.concat_tables([carry, pa.Table.from_batches([batch.slice(0, need)])]).combine_chunks()
                out.append(_cut(joined.to_batches()[0], block))
                batch, carry = batch.slice(need), None
            whole = batch.num_rows // block * block
            if whole:
                out.append(_cut(batch.slice(0, whole), block))
            if batch.num_rows > whole:
                carry = pa.Table.from_batches([batch.slice(whole)])
    if not out:
        return pa.table({})
    return pa.Table.from_batches(out)


def _cut(batch: pa.RecordBatch, block: int) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.FixedSizeListArray.from_arrays(column, block) for column in batch.columns],
                                      names=batch.schema.names)
