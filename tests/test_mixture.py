"""Mixtures end to end on the real engine: realized shares, exact resume (cached and streamed sources), named
validation sets in metrics.jsonl, W&B and results.json, and document-aware packing through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import deepspeed, dslm, metrics, results, tiny_flags
from test_resume import FAULTS, launch_background, step_losses
from test_wandb import offline_runs
from wandb_file import history

from dslm.data.sources import builtin_texts

pytestmark = pytest.mark.slow  # real jobs

WEIGHTS = {"a": 0.5, "b": 0.3, "c": 0.2}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Three sources cut from the built-in texts (one of them JSON lines, one of paragraphs), and a
    validation file for each."""
    d = tmp_path_factory.mktemp("mix")
    texts = builtin_texts()
    k = len(texts) // 3
    (d / "a.txt").write_text("\n".join(texts[3:k]))
    (d / "b.txt").write_text("\n\n".join(texts[k + 3:2 * k]))
    (d / "c.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in texts[2 * k + 3:]))
    for name, start in (("a", 0), ("b", k), ("c", 2 * k)):
        (d / f"val-{name}.txt").write_text("\n".join(texts[start:start + 3]))
    return d


def spec(corpus: Path, name: str = "spec.yaml", validation: tuple[str, ...] = ("a", "b", "c"), **extra: str) -> str:
    lines = ["train:",
             f"  - {{name: a, path: {corpus}/a.txt, weight: {WEIGHTS['a']}}}",
             f"  - {{name: b, path: {corpus}/b.txt, sample_by: paragraph, weight: {WEIGHTS['b']}}}",
             f"  - {{name: c, path: {corpus}/c.jsonl, text_column: body, weight: {WEIGHTS['c']}}}",
             *(f"{k}: {v}" for k, v in extra.items())]
    if validation:
        lines += ["validation:", *(f"  {v}: {corpus}/val-{v}.txt" for v in validation)]
    path = corpus / name
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def shares(out: Path) -> dict[str, float]:
    last = [m for m in metrics(out) if "train/loss" in m][-1]
    total = last["train/tokens_seen"]
    assert total == sum(last[f"train/tokens_seen/{n}"] for n in WEIGHTS)
    return {n: last[f"train/tokens_seen/{n}"] / total for n in WEIGHTS}


@pytest.mark.parametrize("streaming", [False, True], ids=["cached", "streamed"])
def test_a_mixture_follows_its_weights_and_resumes_the_same_order(tmp_path, corpus, streaming):
    """2 ranks, 3 sources: the tokens of each source match the weights within one block per source (the
    blend's bound; per stream reader when streamed), the same seed gives the same losses, and a run killed
    at step 7 and run again from its step-5 checkpoint gives the losses of the run that never stopped."""
    extra = ["--data_spec", spec(corpus), "--save_steps", "5", "--logging_steps", "1"]
    if streaming:
        extra += ["--streaming"]
    reference, again, out = tmp_path / "reference", tmp_path / "again", tmp_path / "out"
    deepspeed(2, "train", *tiny_flags("bert", reference, *extra, steps=10))
    samples = 10 * 2 * 4  # steps x ranks x micro batch
    readers = 2 if streaming else 1
    for name, share in shares(reference).items():
        assert abs(share - WEIGHTS[name]) <= readers / samples, (name, share)
    assert results(reference)["sources"]["a"]["weight"] == pytest.approx(0.5)
    deepspeed(2, "train", *tiny_flags("bert", again, *extra, steps=10))
    assert step_losses(again) == step_losses(reference)  # the same seed, the same order

    killed = launch_background(out, *extra, steps=10, extra_env={"PYTHONPATH": FAULTS, "DSLM_TEST_KILL": "step:7"})
    assert killed.wait(timeout=300) != 0
    deepspeed(2, "train", *tiny_flags("bert", out, *extra, steps=10))
    assert results(out)["resumed_from_step"] == 5
    assert step_losses(out) == step_losses(reference)
    assert shares(out) == shares(reference)


def test_named_validation_sets_each_equal_a_run_that_evaluates_it_alone(tmp_path, corpus, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef0123456789abcdef01234567")
    out = tmp_path / "all"
    proc = dslm("train", *tiny_flags("gpt2", out, "--data_spec", spec(corpus), "--eval_steps", "2",
                                     "--report_to", "wandb", steps=4))
    rows = metrics(out)
    evals = [r for r in rows if "eval/a/loss" in r]
    assert [r["step"] for r in evals] == [0, 2, 4]
    for r in evals:
        assert r["eval/loss"] == r["eval/a/loss"]  # the first set is also the plain eval/loss
        assert {f"eval/{n}/{f}" for n in WEIGHTS for f in ("loss", "perplexity", "accuracy")} <= set(r)
    logged = {r["_step"]: r for r in history(offline_runs(out)[0]) if "eval/b/loss" in r}
    assert {s: logged[s]["eval/b/loss"] for s in logged} == {r["step"]: r["eval/b/loss"] for r in evals}
    res = results(out)
    assert res["eval"]["eval/c/perplexity"] == evals[-1]["eval/c/perplexity"]
    assert res["eval_before"]["eval/b/accuracy"] == evals[0]["eval/b/accuracy"]
    summary = proc.stdout.strip().splitlines()[-1]
    assert all(f"{n}: eval perplexity" in summary for n in WEIGHTS), summary
    for name in WEIGHTS:  # the same training, with only this set to evaluate
        alone = tmp_path / name
        dslm("train", *tiny_flags("gpt2", alone, "--data_spec", spec(corpus, f"{name}.yaml", (name,)),
                                  "--eval_steps", "2", "--report_to", "none", steps=4))
        own = {r["step"]: r for r in metrics(alone) if f"eval/{name}/loss" in r}
        for r in evals:
            for figure in ("loss", "perplexity", "accuracy", "tokens"):
                assert own[r["step"]][f"eval/{name}/{figure}"] == r[f"eval/{name}/{figure}"]


def test_without_validation_sets_each_source_holds_out_its_own(tmp_path, corpus):
    out = tmp_path / "out"
    dslm("train", *tiny_flags("gpt2", out, "--data_spec", spec(corpus, validation=()), steps=2))
    assert {f"eval/{n}/loss" for n in WEIGHTS} <= set(results(out)["eval"])


def test_stop_ends_training_when_the_first_source_runs_out(tmp_path, corpus):
    out = tmp_path / "out"
    proc = dslm("train", *tiny_flags("gpt2", out, "--data_spec", spec(corpus, when_exhausted="stop"),
                                     "--max_seq_length", "256", steps=1000))
    steps = results(out)["train"]["steps"]
    assert 0 < steps < 1000 and f"training ends at step {steps} at the latest" in proc.stdout


def test_document_aware_packing_trains_and_a_family_that_cannot_is_refused(tmp_path, corpus):
    out = tmp_path / "out"
    dslm("train", *tiny_flags("llama", out, "--data_spec", spec(corpus), "--reset_attention_mask", steps=2))
    assert results(out)["train"]["steps"] == 2
    proc = dslm("train", *tiny_flags("xlnet", tmp_path / "x", "--reset_attention_mask", steps=2), check=False)
    assert proc.returncode == 2 and "--reset_attention_mask needs a model family" in proc.stderr
    assert not (tmp_path / "x").exists()
