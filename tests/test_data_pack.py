"""Packing: every token of a split in order, only the final partial block dropped."""

import itertools

import pyarrow as pa
from conftest import prepare_data as prepare

from dslm.config import RunConfig
from dslm.data import cache, sources, units
from dslm.data.pack import blocks


def _tables(values: list[int], cuts: list[int]) -> list[pa.Table]:
    """`values` as one-row-per-token tables, cut at `cuts` into tables of several record batches each."""
    edges = [0, *cuts, len(values)]
    pieces = [pa.record_batch({"input_ids": pa.array(values[a:b], pa.int32())}) for a, b in itertools.pairwise(edges)]
    return [pa.Table.from_batches(pieces[i:i + 2]) for i in range(0, len(pieces), 2)]


def test_blocks_are_the_same_wherever_the_tokens_are_cut():
    values = list(range(1000))
    whole = blocks(_tables(values, []), 64)
    assert whole.num_rows == 1000 // 64
    assert [x for row in whole["input_ids"].to_pylist() for x in row] == values[:whole.num_rows * 64]
    for cuts in ([3], [63, 64, 65], [10, 20, 30, 500, 999], list(range(7, 1000, 7))):
        assert blocks(_tables(values, cuts), 64).to_pylist() == whole.to_pylist(), cuts


def test_packing_keeps_every_token_but_the_last_partial_block(tmp_path, monkeypatch):
    monkeypatch.setattr(units, "CHUNK_BYTES", 3000)  # many chunks and record batches: blocks straddle them
    prepared = prepare(tmp_path, max_seq_length=64, whole_word_mask=True)
    texts = sources.builtin_texts()
    held = max(1, len(texts) * 5 // 100)
    for split, split_texts in (("validation", texts[:held]), ("train", texts[held:])):
        expected = [i for text in split_texts for i in prepared.tokenizer(text)["input_ids"]]
        ds = getattr(prepared, split)
        flat = [i for row in ds["input_ids"] for i in row]
        assert len(flat) == len(expected) // 64 * 64  # only the final partial block is dropped
        assert flat == expected[:len(flat)]  # same tokens, same order
        assert all(len(row) == 64 for row in ds["offset_mapping"])
        assert len(ds["special_tokens_mask"][0]) == 64


def test_packing_beats_run_mlm_per_batch_grouping(tmp_path):
    """run_mlm.py groups inside each map batch of 1000 texts and drops every batch's tail."""
    lines = [f"line number {i} of a corpus " + "word " * (i % 11) for i in range(3000)]
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(lines))
    prepared = prepare(tmp_path, train_file=str(path), line_by_line=False, max_seq_length=64,
                       validation_split_percentage=0)
    lengths = [len(prepared.tokenizer(line)["input_ids"]) for line in lines]
    total = sum(lengths)
    per_batch_kept = sum(sum(lengths[i:i + 1000]) // 64 * 64 for i in range(0, 3000, 1000))
    assert len(prepared.train) * 64 == total // 64 * 64 > per_batch_kept


def test_gpt2_documents_are_separated_by_eos(tmp_path):
    config = RunConfig.from_flags(output_dir=str(tmp_path), model_type="gpt2", vocab_size=400, max_seq_length=32)
    prepared = cache.prepare(config, "gpt2", "clm")
    eos = prepared.tokenizer.eos_token_id
    flat = [i for row in prepared.train["input_ids"] for i in row]
    n_docs = len(sources.builtin_texts()) - max(1, len(sources.builtin_texts()) * 5 // 100)
    # One EOS closes each document; the last may sit in the dropped partial block.
    assert flat.count(eos) in (n_docs - 1, n_docs)
    assert prepared.train.column_names == ["input_ids"]
