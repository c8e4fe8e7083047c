"""End to end on the real DeepSpeed engine: 2 ranks on CPU through the launchers people use."""

from __future__ import annotations

import json

import pytest
from conftest import deepspeed, dslm, metrics, reload_and_evaluate, results, tiny_flags, torchrun, train_losses
from transformers import AutoModelForMaskedLM

pytestmark = pytest.mark.slow  # each test launches real 2-rank DeepSpeed jobs

# From scratch (continued pretraining of every family is tests/test_families.py): the permuted objective, and
# a masked one line by line.
CASES = [
    ("distilbert", "mlm", "zero1", ["--line_by_line", "--max_seq_length", "32"]),
    ("xlnet", "plm", "zero2", []),
]


@pytest.mark.parametrize("family, objective, stage, extra", CASES, ids=[c[0] + "-" + c[2] for c in CASES])
def test_objective_trains_on_two_ranks_and_exports(tmp_path, family, objective, stage, extra):
    out = tmp_path / "out"
    steps = 14
    proc = deepspeed(2, "train", *tiny_flags(family, out, "--deepspeed", f"ds_configs/{stage}.json", *extra,
                                             steps=steps))
    res = results(out)
    assert res["objective"] == objective and res["world_size"] == 2 and res["zero_stage"] == int(stage[-1])
    losses = train_losses(out)
    assert len(losses) == steps // 2
    assert sum(losses[-2:]) < sum(losses[:2]), losses  # loss falls
    assert res["eval"]["eval/loss"] < res["eval_before"]["eval/loss"]
    assert res["eval"]["eval/tokens"] > 0 and 0 <= res["eval"]["eval/accuracy"] <= 1
    assert (out / "final" / "model.safetensors").exists() and (out / "final" / "tokenizer.json").exists()
    # The exported weights are the trained ones: transformers alone reproduces the engine's eval loss
    # (for ZeRO-3 this consolidates weights that no single rank ever held).
    assert reload_and_evaluate(out, objective) == pytest.approx(res["eval"]["eval/loss"], rel=1e-5)
    logged = [m for m in metrics(out) if "train/loss" in m]
    for key in ("train/learning_rate", "train/grad_norm", "perf/tokens_per_second", "train/tokens_seen"):
        assert all(m[key] is not None for m in logged), key
    assert proc.stdout.count("done:") == 1  # only rank 0 reports


def test_deepspeed_and_torchrun_launches_train_the_same(tmp_path):
    """torchrun sets no --local_rank flag and DeepSpeed does: both must give the same run."""
    a, b = tmp_path / "ds", tmp_path / "torchrun"
    deepspeed(2, "train", *tiny_flags("bert", a, steps=4))
    torchrun(2, "train", *tiny_flags("bert", b, steps=4))
    assert train_losses(a) == train_losses(b)
    # Reduction order may differ between the two comm paths: equal to float precision.
    assert results(a)["eval"]["eval/loss"] == pytest.approx(results(b)["eval"]["eval/loss"], rel=1e-6)


# The lines of the README's main job, as a fresh machine prints them (W&B offline without a login).
QUICKSTART_LINES = ("data: the built-in corpus", "tokenizer: training a BertTokenizer of 8000 tokens",
                    "mlm | bert 1.20M params | ZeRO-2 | 1 rank on cpu |", "checkpoints: ~13.7 MiB each",
                    "W&B: no login found, logging offline", "eval before training: loss", "step 50: loss",
                    "step 100: loss", "step 113: loss", "done: 113 steps in")


def test_builtin_default_run_learns_and_prints_only_its_own_lines(tmp_path):
    """`dslm train` with no model or data flags: a small BERT on pydoc's topics (the README's main job), on a
    fresh machine: no tokenizer, no datasets cache, no W&B login. Library bars and notices stay out."""
    out, home = tmp_path / "out", tmp_path / "home"
    fresh = {"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), "HF_HOME": str(home / ".cache" / "hf"),
             "WANDB_MODE": "", "WANDB_API_KEY": ""}
    proc = dslm("train", "--output_dir", str(out), "--num_train_epochs", "1", extra_env=fresh)
    res = results(out)
    assert res["model_type"] == "bert" and res["objective"] == "mlm"
    assert res["eval"]["eval/perplexity"] < res["eval_before"]["eval/perplexity"] / 5
    lines = proc.stdout.splitlines()
    assert len(lines) == len(QUICKSTART_LINES), proc.stdout
    for line, start in zip(lines, QUICKSTART_LINES, strict=True):
        assert line.startswith(start), (line, proc.stdout)
    assert proc.stderr == ""  # the progress bar is for terminals; no warnings


def test_streaming_trains_from_a_file_without_caching_it(tmp_path, text_file):
    out = tmp_path / "out"
    validation = tmp_path / "val.txt"
    validation.write_text("\n".join(text_file.read_text().splitlines()[:40]))
    deepspeed(2, "train", *tiny_flags("gpt2", out, "--streaming", "--train_file", str(text_file),
                                      "--validation_file", str(validation), "--dataloader_num_workers", "1",
                                      steps=6))
    res = results(out)
    assert res["train"]["steps"] == 6 and res["eval"]["eval/tokens"] > 0
    caches = list((out / "cache").glob("tokenized-*"))
    files = [p.name for p in caches[0].glob("slice-*/*.arrow")] if len(caches) == 1 else []
    assert files == ["validation-00000.arrow"]  # the training text is never cached


def test_prepare_builds_the_cache_that_train_then_reuses(tmp_path, text_file):
    out = tmp_path / "out"
    flags = tiny_flags("roberta", out, "--train_file", str(text_file), steps=2)
    proc = dslm("prepare", *flags)
    assert "prepared" in proc.stdout
    caches = list((out / "cache").glob("tokenized-*"))
    assert len(caches) == 1
    stamp = (caches[0] / "slice-00000-of-00001" / "dslm_cache.json").stat().st_mtime_ns
    dslm("train", *flags, "--deepspeed", "ds_configs/zero0.json")
    assert list((out / "cache").glob("tokenized-*")) == caches
    assert (caches[0] / "slice-00000-of-00001" / "dslm_cache.json").stat().st_mtime_ns == stamp
    assert results(out)["data_fingerprint"] == caches[0].name.removeprefix("tokenized-")


def test_bf16_on_cpu(tmp_path):
    out = tmp_path / "out"
    dslm("train", *tiny_flags("bert", out, "--bf16", steps=4))
    assert json.loads((out / "ds_config.json").read_text())["bf16"]["enabled"] is True
    assert results(out)["eval"]["eval/loss"] < results(out)["eval_before"]["eval/loss"]
    AutoModelForMaskedLM.from_pretrained(out / "final")


def test_gradient_checkpointing_and_logging_first_step(tmp_path):
    """Recomputing activations gives the same losses; --logging_first_step adds step 1 to the log."""
    plain, recomputed = tmp_path / "plain", tmp_path / "recomputed"
    dslm("train", *tiny_flags("gpt2", plain, steps=4))
    dslm("train", *tiny_flags("gpt2", recomputed, "--gradient_checkpointing", "--logging_first_step", steps=4))
    logged = {m["step"]: m["train/loss"] for m in metrics(recomputed) if "train/loss" in m}
    assert sorted(logged) == [1, 2, 4]
    # Each logged loss is the mean since the previous log: plain's step 2 covers steps 1 and 2.
    assert [(logged[1] + logged[2]) / 2, logged[4]] == pytest.approx(train_losses(plain), rel=1e-5)


def test_the_chunked_head_trains_as_the_plain_one_and_a_profile_names_it(tmp_path):
    """GPT-2 with an 8,000-entry vocabulary and 8 x 255 predictions per micro batch: 16M logits, two chunks.
    The losses of the plain head, and a trace of steps 2-3 that holds the chunked head's backward."""
    chunked, plain = tmp_path / "chunked", tmp_path / "plain"
    flags = ["--model_type", "gpt2", "--config_overrides", "n_embd=32,n_layer=2,n_head=2", "--vocab_size", "8000",
             "--max_seq_length", "256", "--per_device_train_batch_size", "8", "--max_steps", "4",
             "--logging_steps", "1", "--validation_split_percentage", "0", "--learning_rate", "2e-3"]
    proc = dslm("train", *flags, "--output_dir", str(chunked), "--profile", "2-3")
    dslm("train", *flags, "--output_dir", str(plain), "--chunked_cross_entropy", "false")
    assert train_losses(chunked) == pytest.approx(train_losses(plain), rel=1e-4)
    trace = json.loads((chunked / "profile" / "rank0.steps-2-3.pt.trace.json").read_text())
    names = {e.get("name", "") for e in trace["traceEvents"]}
    assert any("LinearCrossEntropyBackward" in n for n in names) and "aten::addmm" in names
    assert "profile of steps 2-3 (rank 0)" in proc.stdout and "Self CPU time total" in proc.stdout
    # ZeRO-3 keeps the plain head (its partitioned backward needs the projection's output in the graph)
    dslm("train", *flags, "--output_dir", str(tmp_path / "zero3"), "--deepspeed", "zero3")
    assert results(tmp_path / "zero3")["train"]["steps"] == 4
