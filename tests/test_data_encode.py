"""Encoding: the Rust fast path gives exactly what the tokenizer's own call gives."""

import datasets
import pyarrow as pa
import pytest

from dslm.data import encode, sources

# Texts that exercise what a tokenizer can get wrong: accents, CJK, emoji, odd whitespace, control
# characters, special tokens of every family written in the text, and a long one (truncation).
TRICKY = ["Hello, world! 42 naïve CAFÉ", "  leading and  trailing  ", "日本語のテキスト 🙂", "a\tb\nc\u00a0d\u200be",
          "x", "\x00\x01 control", "[MASK] [SEP] <mask> </s> <sep> <|endoftext|> <unk> written in the text",
          " ".join(["words"] * 100)]


def _trained(family):
    from dslm import tokenizer as tok

    return tok.train(family, iter([sources.builtin_texts()[:40]]), 300)


@pytest.mark.parametrize("family", ["bert", "roberta", "gpt2", "xlnet"])
def test_rust_path_gives_exactly_what_the_tokenizer_call_gives(family):
    """The cache build reads the Rust tokenizer directly; its ids, masks and offsets must be __call__'s."""
    tokenizer = _trained(family)
    texts = sources.builtin_texts()[:6] + TRICKY
    for line_by_line in (False, True):
        expected = tokenizer(texts, truncation=line_by_line, max_length=32 if line_by_line else None,
                             return_special_tokens_mask=True, return_offsets_mapping=True)
        eos = tokenizer.eos_token_id
        # Packed documents get an EOS where the tokenizer adds none (GPT-2, XLNet): their boundary.
        add_eos = not line_by_line and eos is not None and eos not in tokenizer("a")["input_ids"]
        for columns in (["input_ids"], ["input_ids", "special_tokens_mask"],
                        ["input_ids", "special_tokens_mask", "offset_mapping"]):
            enc = encode.Encoder(tokenizer, columns, line_by_line=line_by_line, max_seq_length=32)
            assert enc.rust is not None  # the fast path is the one under test
            arrays = next(encode.encoded(enc, iter([texts])))
            ds = datasets.Dataset(datasets.table.InMemoryTable(pa.table(arrays)).cast(encode.features(columns)
                                                                                        .arrow_schema))
            streamed = encode.encoder(tokenizer, columns, line_by_line=line_by_line, max_seq_length=32)(texts)
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
    enc = encode.Encoder(tokenizer, ["input_ids"], line_by_line=False, max_seq_length=32)
    assert enc.rust is None
    assert enc.rows(enc.encode(["hello"]))["input_ids"] == [tokenizer(["hello"])["input_ids"][0]]


def test_encoding_batch_after_batch_gives_the_rows_of_one_call():
    """The build encodes batch after batch (the next one while converting the last): order and
    content must not depend on where the batches are cut."""
    tokenizer = _trained("gpt2")
    texts = sources.builtin_texts()[:30] + TRICKY
    columns = ["input_ids", "special_tokens_mask", "offset_mapping"]
    enc = encode.Encoder(tokenizer, columns, line_by_line=False, max_seq_length=32)
    whole = enc.rows(enc.encode(texts))
    cuts = [texts[i:i + 7] for i in range(0, len(texts), 7)]
    got: dict[str, list] = {name: [] for name in columns}
    for arrays in encode.encoded(enc, iter(cuts)):
        for name in columns:
            got[name] += [list(map(list, r)) if name == "offset_mapping" else r for r in arrays[name].to_pylist()]
    assert got["input_ids"] == whole["input_ids"]
    assert got["special_tokens_mask"] == whole["special_tokens_mask"]
    assert got["offset_mapping"] == [[list(pair) for pair in row] for row in whole["offset_mapping"]]
