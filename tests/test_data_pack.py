"""Packing: every token of a split in order, only the final partial block dropped."""

from conftest import prepare_data as prepare
from datasets import Dataset

from dslm.config import RunConfig
from dslm.data import cache, encode, sources
from dslm.data.pack import pack


def test_packing_keeps_every_token_but_the_last_partial_block(tmp_path):
    tokenizer = prepare(tmp_path, max_seq_length=64).tokenizer
    corpus = sources.load_corpus(RunConfig.from_flags(output_dir=str(tmp_path / "o2")))
    columns = encode.columns_for("mlm", whole_word_mask=True)
    for split in ("train", "validation"):
        texts = corpus[split]["text"]
        expected = [i for text in texts for i in tokenizer(text)["input_ids"]]
        tokenized = encode.tokenize(corpus[split], tokenizer, columns, line_by_line=False, max_seq_length=64,
                                    num_proc=None)
        packed = pack(tokenized, 64)
        flat = [i for row in packed["input_ids"] for i in row]
        assert len(flat) == len(expected) // 64 * 64  # only the final partial block is dropped
        assert flat == expected[:len(flat)]  # same tokens, same order
        assert all(len(row) == 64 for row in packed["offset_mapping"])
        assert len(packed["special_tokens_mask"][0]) == 64


def test_packing_beats_run_mlm_per_batch_grouping(tmp_path):
    """run_mlm.py groups inside each map batch of 1000 texts and drops every batch's tail."""
    tokenizer = prepare(tmp_path, max_seq_length=64).tokenizer
    lines = [f"line number {i} of a corpus with many short lines" for i in range(3000)]

    ds = encode.tokenize(Dataset.from_dict({"text": lines}), tokenizer, ["input_ids"], line_by_line=False,
                       max_seq_length=64, num_proc=None)
    total = sum(len(r) for r in ds["input_ids"])
    per_batch_kept = sum(sum(len(r) for r in ds["input_ids"][i:i + 1000]) // 64 * 64 for i in range(0, 3000, 1000))
    assert len(pack(ds, 64)) * 64 == total // 64 * 64 > per_batch_kept


def test_gpt2_documents_are_separated_by_eos(tmp_path):
    config = RunConfig.from_flags(output_dir=str(tmp_path), model_type="gpt2", vocab_size=400, max_seq_length=32)
    prepared = cache.prepare(config, "gpt2", "clm")
    eos = prepared.tokenizer.eos_token_id
    flat = [i for row in prepared.train["input_ids"] for i in row]
    n_docs = len(sources.load_corpus(config)["train"])
    # One EOS closes each document; the last may sit in the dropped partial block.
    assert flat.count(eos) in (n_docs - 1, n_docs)
    assert prepared.train.column_names == ["input_ids"]
