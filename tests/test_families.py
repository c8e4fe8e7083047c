"""Continued pretraining of the checkpoints people have, and any family from scratch: 2 ranks through
DeepSpeed's launcher, on model directories that carry the real checkpoints' tokenizer conventions
(tests/model_dirs.py: GPT-2, Llama without a pad token, Llama adding BOS, XLNet padding left and ending
with <sep> <cls>, RoBERTa's offset positions, BERT lowercasing, DistilBERT without token type ids)."""

from __future__ import annotations

import json
from pathlib import Path

import model_dirs
import pytest
import torch
from conftest import deepspeed, metrics, reload_and_evaluate, results, tiny_flags
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from dslm.data.sources import builtin_texts

pytestmark = pytest.mark.slow  # each case is a real 2-rank job

CONTINUED = ("bert", "roberta", "distilbert", "gpt2", "xlnet", "llama", "qwen2", "modernbert")
# Packed runs spread over ZeRO 0-2 (line-by-line runs are all ZeRO-3): every stage meets several families.
PACKED_STAGE = {"bert": "zero0", "roberta": "zero1", "distilbert": "zero2", "gpt2": "zero2", "xlnet": "zero1",
                "llama": "zero2", "qwen2": "zero0", "modernbert": "zero1"}
FROM_SCRATCH = ("llama", "qwen2", "mistral", "modernbert")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    """Text as users have it: wrapped prose, empty lines, a very long line, odd characters."""
    root = tmp_path_factory.mktemp("corpus")
    texts = builtin_texts()
    train, validation = root / "train.txt", root / "validation.txt"
    train.write_text("\n".join(texts[:24]) + "\n\n\n" + " ".join(texts[24].split()) + "\n\tnaïve CAFÉ 日本語 🙂\n")
    validation.write_text("\n".join(texts[30:33]) + "\n")
    return train, validation


def same_tokenizer(a: Path, b: Path) -> None:
    """final/'s tokenizer is the input one: the same ids, special tokens, padding side and pad token."""
    ta, tb = AutoTokenizer.from_pretrained(a), AutoTokenizer.from_pretrained(b)
    assert ta.get_vocab() == tb.get_vocab()
    assert ta.all_special_tokens == tb.all_special_tokens and ta.pad_token == tb.pad_token
    assert ta.padding_side == tb.padding_side
    text = "The interpreter evaluates EXPRESSIONS, naïve 日本語."
    assert ta(text)["input_ids"] == tb(text)["input_ids"]


@pytest.mark.parametrize("layout", ["packed", "line_by_line"])
@pytest.mark.parametrize("family", CONTINUED)
def test_continue_pretraining_a_checkpoint(tmp_path, corpus, family, layout):
    """The seed command's shape: --model_name_or_path DIR --max_seq_length 128 [--line_by_line] --train_file T
    --validation_file V --do_train --do_eval --max_steps N --save_steps M --output_dir D."""
    model_dir = model_dirs.make(family, tmp_path / "model")
    if family == "llama" and layout == "packed":  # a checkpoint saved in bf16 continues as an fp32 run
        AutoModelForCausalLM.from_pretrained(model_dir).to(torch.bfloat16).save_pretrained(model_dir)
    out = tmp_path / "out"
    train, validation = corpus
    flags = ["--model_name_or_path", str(model_dir), "--max_seq_length", "128", "--train_file", str(train),
             "--validation_file", str(validation), "--do_train", "--do_eval", "--max_steps", "6", "--save_steps", "3",
             "--output_dir", str(out), "--learning_rate", "3e-3", "--logging_steps", "2"]
    if layout == "packed":
        flags += ["--deepspeed", PACKED_STAGE[family]] + (["--whole_word_mask"] if family == "bert" else [])
    else:
        # ZeRO-3 builds and loads the model partitioned; XLNet gets one line per batch (often odd-length) and
        # an eval set of 7 lines in batches of 3: three batches on two ranks, the last of one line.
        flags += ["--line_by_line", "--deepspeed", "zero3", "--max_eval_samples", "7",
                  "--per_device_eval_batch_size", "3",
                  "--per_device_train_batch_size", "1" if family == "xlnet" else "4"]
    deepspeed(2, "train", *flags)
    res = results(out)
    assert res["objective"] == model_dirs.OBJECTIVE[family] and res["model_type"] == family
    assert res["eval"]["eval/loss"] < res["eval_before"]["eval/loss"], res
    assert reload_and_evaluate(out, res["objective"]) == pytest.approx(res["eval"]["eval/loss"], rel=1e-5)
    same_tokenizer(model_dir, out / "final")
    assert all(m["train/loss"] is not None for m in metrics(out) if "train/loss" in m)
    if family == "llama" and layout == "packed":
        with safe_open(out / "final" / "model.safetensors", "pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}  # noqa: SIM118 - not a dict


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
@pytest.mark.parametrize("family", FROM_SCRATCH)
def test_any_family_from_scratch(tmp_path, family, stage):
    """No tokenizer flag: one of the family's kind is trained on the corpus, its special ids set in the config."""
    out = tmp_path / "out"
    deepspeed(2, "train", *tiny_flags(family, out, "--deepspeed", stage, steps=6))
    res = results(out)
    assert res["zero_stage"] == int(stage[-1]) and res["world_size"] == 2
    assert res["eval"]["eval/loss"] < res["eval_before"]["eval/loss"], res
    assert reload_and_evaluate(out, res["objective"]) == pytest.approx(res["eval"]["eval/loss"], rel=1e-5)
    config = json.loads((out / "final" / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(out / "final")
    assert config["vocab_size"] >= len(tokenizer)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "cls_token_id", "sep_token_id"):
        if config.get(name) is not None:
            assert config[name] == getattr(tokenizer, name), name
