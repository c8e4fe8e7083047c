import json
import os

import pandas as pd
import pytest
from datasets import Dataset
from transformers import AutoTokenizer

from dslm import data
from dslm.config import ConfigError, RunConfig


def prepare(tmp_path, **flags):
    flags.setdefault("output_dir", str(tmp_path / "out"))
    flags.setdefault("model_type", "bert")
    flags.setdefault("vocab_size", 500)
    config = RunConfig.from_flags(**flags)
    return data.prepare(config, config.model.model_type, "mlm")


def test_packing_keeps_every_token_but_the_last_partial_block(tmp_path):
    tokenizer = prepare(tmp_path, max_seq_length=64).tokenizer
    corpus = data.load_corpus(RunConfig.from_flags(output_dir=str(tmp_path / "o2")))
    columns = data.columns_for("mlm", whole_word_mask=True)
    for split in ("train", "validation"):
        texts = corpus[split]["text"]
        expected = [i for text in texts for i in tokenizer(text)["input_ids"]]
        tokenized = data.tokenize(corpus[split], tokenizer, columns, line_by_line=False, max_seq_length=64,
                                  num_proc=None)
        packed = data.pack(tokenized, 64)
        flat = [i for row in packed["input_ids"] for i in row]
        assert len(flat) == len(expected) // 64 * 64  # only the final partial block is dropped
        assert flat == expected[:len(flat)]  # same tokens, same order
        assert all(len(row) == 64 for row in packed["offset_mapping"])
        assert len(packed["special_tokens_mask"][0]) == 64


def test_packing_beats_run_mlm_per_batch_grouping(tmp_path):
    """run_mlm.py groups inside each map batch of 1000 texts and drops every batch's tail."""
    tokenizer = prepare(tmp_path, max_seq_length=64).tokenizer
    lines = [f"line number {i} of a corpus with many short lines" for i in range(3000)]
    from datasets import Dataset

    ds = data.tokenize(Dataset.from_dict({"text": lines}), tokenizer, ["input_ids"], line_by_line=False,
                       max_seq_length=64, num_proc=None)
    total = sum(len(r) for r in ds["input_ids"])
    per_batch_kept = sum(sum(len(r) for r in ds["input_ids"][i:i + 1000]) // 64 * 64 for i in range(0, 3000, 1000))
    assert len(data.pack(ds, 64)) * 64 == total // 64 * 64 > per_batch_kept


def test_gpt2_documents_are_separated_by_eos(tmp_path):
    config = RunConfig.from_flags(output_dir=str(tmp_path), model_type="gpt2", vocab_size=400, max_seq_length=32)
    prepared = data.prepare(config, "gpt2", "clm")
    eos = prepared.tokenizer.eos_token_id
    flat = [i for row in prepared.train["input_ids"] for i in row]
    n_docs = len(data.load_corpus(config)["train"])
    # One EOS closes each document; the last may sit in the dropped partial block.
    assert flat.count(eos) in (n_docs - 1, n_docs)
    assert prepared.train.column_names == ["input_ids"]


def test_line_by_line_keeps_non_empty_lines_truncated(tmp_path, text_file):
    prepared = prepare(tmp_path, train_file=str(text_file), line_by_line=True, max_seq_length=16,
                       validation_split_percentage=10)
    lines = [ln for ln in text_file.read_text().splitlines() if ln.strip()]
    assert len(prepared.train) + len(prepared.validation) == len(lines)
    assert max(len(r) for r in prepared.train["input_ids"]) == 16
    assert min(len(r) for r in prepared.train["input_ids"]) < 16


def test_cache_is_reused_and_rebuilt_when_inputs_change(tmp_path, text_file):
    out = tmp_path / "out"
    first = prepare(tmp_path, train_file=str(text_file), output_dir=str(out), max_seq_length=32)
    cache = out / "cache" / f"tokenized-{first.fingerprint}"
    stamp = (cache / "dslm_cache.json").stat().st_mtime_ns
    again = prepare(tmp_path, train_file=str(text_file), output_dir=str(out), max_seq_length=32)
    assert again.fingerprint == first.fingerprint
    assert (cache / "dslm_cache.json").stat().st_mtime_ns == stamp  # reused, not rebuilt

    longer = prepare(tmp_path, train_file=str(text_file), output_dir=str(out), max_seq_length=48)
    assert longer.fingerprint != first.fingerprint
    text_file.write_text(text_file.read_text() + "\nOne more line of text at the end.")
    edited = prepare(tmp_path, train_file=str(text_file), output_dir=str(out), max_seq_length=32)
    assert edited.fingerprint != first.fingerprint
    other_tok = prepare(tmp_path, train_file=str(text_file), output_dir=str(out), max_seq_length=32, vocab_size=450)
    assert other_tok.fingerprint != edited.fingerprint

    prepare(tmp_path, train_file=str(text_file), output_dir=str(out), max_seq_length=32, overwrite_cache=True)
    rebuilt = out / "cache" / f"tokenized-{edited.fingerprint}" / "dslm_cache.json"
    assert rebuilt.stat().st_mtime_ns > stamp


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".parquet"])
def test_structured_files_use_text_or_the_only_string_column(tmp_path, suffix):
    from dslm.data import builtin_texts

    frame = pd.DataFrame({"body": builtin_texts()[:20], "n": range(20)})
    path = tmp_path / f"corpus{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".parquet":
        frame.to_parquet(path)
    else:
        path.write_text("\n".join(json.dumps(r) for r in frame.to_dict("records")))
    prepared = prepare(tmp_path, train_file=str(path), max_seq_length=32)
    assert len(prepared.train) > 10


def test_missing_text_column_is_named(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"a": "x", "b": "y"}\n')
    with pytest.raises(ConfigError, match="no 'text' column and 2 string columns"):
        prepare(tmp_path, train_file=str(path))
    with pytest.raises(ConfigError, match="has no column 'body'"):
        prepare(tmp_path, train_file=str(path), text_column="body")


def test_corpus_too_small_for_one_block(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("just a few words\nand a few more\n")
    with pytest.raises(ConfigError, match="fewer than one --max_seq_length block"):
        prepare(tmp_path, train_file=str(path), max_seq_length=128, validation_split_percentage=0,
                vocab_size=100)


def test_sample_limits(tmp_path):
    prepared = prepare(tmp_path, max_train_samples=10, max_eval_samples=3, max_seq_length=32)
    assert len(prepared.train) == 10 and len(prepared.validation) == 3


def test_pretrained_tokenizer_directory_is_used(tmp_path):
    first = prepare(tmp_path, max_seq_length=32)
    saved = tmp_path / "tok"
    first.tokenizer.save_pretrained(saved)
    second = prepare(tmp_path, max_seq_length=32, tokenizer_name=str(saved), output_dir=str(tmp_path / "o3"))
    assert AutoTokenizer.from_pretrained(saved).get_vocab() == second.tokenizer.get_vocab()
    assert second.fingerprint == first.fingerprint


def test_dataset_name_loads_a_local_dataset_directory(tmp_path):
    from dslm.data import builtin_texts

    folder = tmp_path / "my_dataset"
    folder.mkdir()
    (folder / "train.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in builtin_texts()[:20]))
    (folder / "validation.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in builtin_texts()[20:23]))
    prepared = prepare(tmp_path, dataset_name=str(folder), max_seq_length=32)
    assert len(prepared.train) > 50 and len(prepared.validation) > 5


def test_preprocessing_workers_give_the_same_data(tmp_path):
    one = prepare(tmp_path, max_seq_length=32, output_dir=str(tmp_path / "a"))
    two = prepare(tmp_path, max_seq_length=32, output_dir=str(tmp_path / "b"), preprocessing_num_workers=2)
    assert one.train["input_ids"] == two.train["input_ids"]


def test_a_trained_tokenizer_is_reused_by_later_runs_on_the_same_corpus(tmp_path):
    first = prepare(tmp_path, max_seq_length=32, output_dir=str(tmp_path / "a"))
    second = prepare(tmp_path, max_seq_length=32, output_dir=str(tmp_path / "b"))
    assert tokenizer_fp(first) == tokenizer_fp(second)
    assert first.train["input_ids"] == second.train["input_ids"]
    moved = prepare(tmp_path, max_seq_length=32, output_dir=str(tmp_path / "c"), cache_dir=str(tmp_path / "cc"))
    assert list((tmp_path / "cc").glob("tokenizer-*")) and list((tmp_path / "cc").glob("tokenized-*"))
    assert moved.train["input_ids"]


def tokenizer_fp(prepared):
    from dslm.tokenizer import fingerprint

    return fingerprint(prepared.tokenizer)


# Texts that exercise what a tokenizer can get wrong: accents, CJK, emoji, odd whitespace, control
# characters, special tokens of every family written in the text, and a long one (truncation).
TRICKY = ["Hello, world! 42 naïve CAFÉ", "  leading and  trailing  ", "日本語のテキスト 🙂", "a\tb\nc\u00a0d\u200be",
          "x", "\x00\x01 control", "[MASK] [SEP] <mask> </s> <sep> <|endoftext|> <unk> written in the text",
          " ".join(["words"] * 100)]


def _trained(family):
    from dslm import tokenizer as tok

    return tok.train(family, iter([data.builtin_texts()[:40]]), 300)


@pytest.mark.parametrize("family", ["bert", "roberta", "gpt2", "xlnet"])
def test_rust_path_gives_exactly_what_the_tokenizer_call_gives(family):
    """The cache build reads the Rust tokenizer directly; its ids, masks and offsets must be __call__'s."""
    tokenizer = _trained(family)
    texts = data.builtin_texts()[:6] + TRICKY
    for line_by_line in (False, True):
        expected = tokenizer(texts, truncation=line_by_line, max_length=32 if line_by_line else None,
                             return_special_tokens_mask=True, return_offsets_mapping=True)
        eos = tokenizer.eos_token_id
        # Packed documents get an EOS where the tokenizer adds none (GPT-2, XLNet): their boundary.
        add_eos = not line_by_line and eos is not None and eos not in tokenizer("a")["input_ids"]
        for columns in (["input_ids"], ["input_ids", "special_tokens_mask"],
                        ["input_ids", "special_tokens_mask", "offset_mapping"]):
            enc = data._Encoder(tokenizer, columns, line_by_line=line_by_line, max_seq_length=32)
            assert enc.rust is not None  # the fast path is the one under test
            ds = data.tokenize(Dataset.from_dict({"text": texts}), tokenizer, columns, line_by_line=line_by_line,
                               max_seq_length=32, num_proc=None)
            assert ds.features == data._features(columns)
            streamed = data.encoder(tokenizer, columns, line_by_line=line_by_line, max_seq_length=32)(texts)
            for name, extra in (("input_ids", eos), ("special_tokens_mask", 1), ("offset_mapping", (0, 0))):
                if name in columns:
                    want = [list(row) + ([extra] if add_eos else []) for row in expected[name]]
                    assert streamed[name] == want, (name, line_by_line)
                    if name == "offset_mapping":
                        want = [[list(pair) for pair in row] for row in want]
                    assert ds[name] == want, (name, line_by_line)


def test_a_tokenizer_that_encodes_in_python_keeps_its_call():
    tokenizer = _trained("bert")

    class Shouting(type(tokenizer)):  # changes the text before the Rust tokenizer sees it
        def _encode_plus(self, text, *args, **kwargs):
            return super()._encode_plus([t.upper() for t in text], *args, **kwargs)

    tokenizer.__class__ = Shouting
    enc = data._Encoder(tokenizer, ["input_ids"], line_by_line=False, max_seq_length=32)
    assert enc.rust is None
    assert enc.rows(enc.encode(["hello"]))["input_ids"] == [tokenizer(["hello"])["input_ids"][0]]


def test_the_cache_build_restores_tokenizers_parallelism(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # as dslm's CLI sets it
    prepare(tmp_path, max_seq_length=32)
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"  # DataLoader workers forked later stay serial


def test_tokenize_in_many_batches_gives_the_same_rows(monkeypatch):
    """The build encodes batch after batch (the next one while converting the last): order and
    content must not depend on where the batches are cut."""
    tokenizer = _trained("gpt2")
    ds = Dataset.from_dict({"text": data.builtin_texts()[:30] + TRICKY})
    columns = ["input_ids", "special_tokens_mask", "offset_mapping"]
    whole = data.tokenize(ds, tokenizer, columns, line_by_line=False, max_seq_length=32, num_proc=None)
    monkeypatch.setattr(data, "ENCODE_BATCH_BYTES", 2000)  # many batches, some of a single long text
    assert len(list(data._text_batches(ds, data.ENCODE_BATCH_BYTES))) > 10
    cut = data.tokenize(ds, tokenizer, columns, line_by_line=False, max_seq_length=32, num_proc=None)
    assert cut.to_dict() == whole.to_dict()
    assert data.pack(cut, 32).to_dict() == data.pack(whole, 32).to_dict()
