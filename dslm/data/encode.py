"""Texts -> token columns, exactly as the tokenizer's own call gives them, as fast as Rust allows."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
from transformers import PreTrainedTokenizerBase


def columns_for(objective: str, whole_word_mask: bool) -> list[str]:
    """What the objective's collator needs beyond input_ids."""
    if objective != "mlm":
        return ["input_ids"]
    return ["input_ids", "special_tokens_mask"] + (["offset_mapping"] if whole_word_mask else [])


def features(columns: list[str]) -> datasets.Features:
    types = {"input_ids": datasets.Sequence(datasets.Value("int32")),
             "special_tokens_mask": datasets.Sequence(datasets.Value("int8")),
             "offset_mapping": datasets.Sequence(datasets.Sequence(datasets.Value("int32")))}
    return datasets.Features({name: types[name] for name in columns})


# Methods of a tokenizer whose work the Rust path below redoes: a class that overrides one in Python
# (remote code, a model-specific tokenizer) may change the ids, so it keeps going through __call__.
_CALL_METHODS = ("__call__", "_encode_plus", "_batch_encode_plus", "_convert_encoding")
_BASE_MODULES = ("transformers.tokenization_utils_base", "transformers.tokenization_utils_tokenizers",
                 "transformers.tokenization_utils_fast")
# Texts on which the Rust path must give __call__'s output before it is used: words, numbers,
# accents, CJK, emoji, odd whitespace, a control character and a special token written in the text.
_PROBE = ("Hello, world! 42 naïve CAFÉ", "  leading and  trailing  ", "日本語のテキスト 🙂", "a\tb\nc\u00a0d\u200be",
          "x", "{special} inside {special}")


class Encoder:
    """texts -> the `columns` of each, exactly as `tokenizer(texts, ...)` gives them (and an EOS after
    each document where packing needs one and the tokenizer adds none).

    Two steps, so that the cache build can encode one batch (in Rust, without the GIL) while it
    converts the previous one: `encode`, then `rows` (per-text lists, as __call__) or `arrays`
    (Arrow list arrays). Where the tokenizer allows, `encode` is the Rust tokenizer itself: __call__
    would convert each Encoding into a dict of lists (token_type_ids and attention_mask too, which
    nothing here needs) and stack them into a BatchEncoding. Without offsets it is
    `encode_batch_fast`, which skips computing them.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, columns: list[str], *, line_by_line: bool,
                 max_seq_length: int) -> None:
        self.tokenizer, self.columns = tokenizer, columns
        self.line_by_line, self.max_seq_length = line_by_line, max_seq_length
        # Packed documents need a boundary: tokenizers that add no special tokens (GPT-2) get an EOS.
        self.add_eos = not line_by_line and tokenizer.eos_token_id is not None and not tokenizer(
            "a", add_special_tokens=True)["input_ids"].count(tokenizer.eos_token_id)
        self.extras = {"input_ids": tokenizer.eos_token_id, "special_tokens_mask": 1, "offset_mapping": (0, 0)}
        self.rust = self._rust()
        if self.rust is not None:
            special = (tokenizer.all_special_tokens or [""])[0]
            probe = [text.format(special=special) for text in _PROBE]
            if line_by_line:  # and one that truncation cuts
                probe.append(" ".join(["word"] * (2 * max_seq_length)))
            got = self.rows(self.encode(probe))
            rust, self.rust = self.rust, None
            if got == self.rows(self.encode(probe)):
                self.rust = rust  # else __call__ stays

    def _rust(self) -> Any:
        """A copy of the Rust tokenizer set up as __call__ sets it up, or None where __call__ must run."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            return None
        for name in _CALL_METHODS:
            owner = next((cls for cls in type(self.tokenizer).__mro__ if name in vars(cls)), None)
            if owner is not None and owner.__module__ not in _BASE_MODULES:
                return None
        from tokenizers import Tokenizer

        rust = Tokenizer.from_str(backend.to_str())  # a copy: these settings stay off the caller's tokenizer
        # As set_truncation_and_padding before each call: no padding; truncation only for line_by_line.
        rust.no_padding()
        if self.line_by_line:
            rust.enable_truncation(self.max_seq_length, stride=0, strategy="longest_first",
                                   direction=self.tokenizer.truncation_side)
        else:
            rust.no_truncation()
        rust.encode_special_tokens = bool(getattr(self.tokenizer, "split_special_tokens", False))
        return rust

    def encode(self, texts: list[str]) -> Any:
        if self.rust is None:
            return self.tokenizer(texts, truncation=self.line_by_line,
                                  max_length=self.max_seq_length if self.line_by_line else None,
                                  return_special_tokens_mask="special_tokens_mask" in self.columns,
                                  return_offsets_mapping="offset_mapping" in self.columns, verbose=False)
        if "offset_mapping" in self.columns or not hasattr(self.rust, "encode_batch_fast"):  # older tokenizers
            return self.rust.encode_batch(texts)
        return self.rust.encode_batch_fast(texts)

    def _column(self, encoded: Any, name: str) -> list[list]:
        if self.rust is None:
            rows = encoded[name]
        elif name == "input_ids":
            rows = [e.ids for e in encoded]
        elif name == "special_tokens_mask":
            rows = [e.special_tokens_mask for e in encoded]
        else:
            rows = [e.offsets for e in encoded]
        if self.add_eos:
            for row in rows:
                row.append(self.extras[name])
        return rows

    def rows(self, encoded: Any) -> dict[str, list]:
        return {name: self._column(encoded, name) for name in self.columns}

    def arrays(self, encoded: Any) -> dict[str, pa.Array]:
        return {name: _to_arrow(self._column(encoded, name), name) for name in self.columns}


def encoder(tokenizer: PreTrainedTokenizerBase, columns: list[str], *, line_by_line: bool,
            max_seq_length: int) -> Callable[[list[str]], dict[str, list]]:
    """texts -> the `columns` of each, as lists, exactly as `tokenizer(texts, ...)` gives them (see
    `Encoder`): what the stream runs."""
    enc = Encoder(tokenizer, columns, line_by_line=line_by_line, max_seq_length=max_seq_length)
    return lambda texts: enc.rows(enc.encode(texts))


_FORKED = False  # set in a child forked after this module loaded: see _rust_threads


def _mark_forked() -> None:
    global _FORKED
    _FORKED = True


os.register_at_fork(after_in_child=_mark_forked)


@contextlib.contextmanager
def _rust_threads() -> Iterator[None]:
    """Let the Rust tokenizer encode on every core while this process builds the cache.

    dslm's CLI turns the tokenizers library's parallelism off for the whole process: a DataLoader
    worker forked after the Rust thread pool has run would wait on it forever. The library reads
    TOKENIZERS_PARALLELISM at each batch call, so it is on for the build only and restored after; a
    child forked later sees "false" again (or, if it was unset, tokenizers turns it off in the child
    itself). A process that is itself a fork may have inherited a used, threadless pool: it stays
    as it is. RAYON_NUM_THREADS caps the threads.
    """
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    if not _FORKED:
        os.environ["TOKENIZERS_PARALLELISM"] = "true"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def _to_arrow(rows: list[list], name: str) -> pa.Array:
    """Per-text lists of one column -> an Arrow list array of `features`' type, built from numpy."""
    lengths = np.fromiter(map(len, rows), np.int64, len(rows))
    offsets = np.zeros(len(rows) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = itertools.chain.from_iterable(rows)
    if name == "offset_mapping":  # (start, end) pairs: list<list<int32>>, as datasets stores tuples
        values = np.fromiter(itertools.chain.from_iterable(flat), np.int32, 2 * int(offsets[-1]))
        pairs = pa.ListArray.from_arrays(np.arange(0, len(values) + 1, 2, dtype=np.int32), values)
        return pa.ListArray.from_arrays(offsets, pairs)
    dtype = np.int8 if name == "special_tokens_mask" else np.int32
    return pa.ListArray.from_arrays(offsets, np.fromiter(flat, dtype, int(offsets[-1])))


def encoded(enc: Encoder, batches: Iterator[list[str]]) -> Iterator[dict[str, pa.Array]]:
    """Each batch's columns as Arrow list arrays (types of `features`), in order.

    The Rust tokenizer runs on every core (see `_rust_threads`) and a thread encodes the next batch
    while this one converts the last, so conversion costs little beyond encoding.
    """
    with _rust_threads(), ThreadPoolExecutor(1) as pool:
        pending = pool.submit(enc.encode, next(batches, []))
        while pending is not None:
            result = pending.result()
            texts = next(batches, None)
            pending = pool.submit(enc.encode, texts) if texts is not None else None
            yield enc.arrays(result)
            del result
