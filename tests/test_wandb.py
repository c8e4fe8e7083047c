"""W&B tracking with real offline run files, read back through wandb's own protobuf classes."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
from conftest import deepspeed, dslm, metrics, results, run, tiny_flags, train_losses
from test_resume import launch_background, wait_for_step
from wandb_file import config, history, records, run_ids

pytestmark = pytest.mark.slow  # real jobs writing real W&B offline run files

FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"  # the shape of a W&B API key
FAKE_TOKEN = "hf_FakeTokenFakeTokenFakeToken1234"


def offline_runs(out: Path) -> list[Path]:
    return sorted(out.glob("wandb/offline-run-*/run-*.wandb"))


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)


def test_two_ranks_write_one_run_with_config_and_metrics(tmp_path, offline):
    out = tmp_path / "out"
    proc = deepspeed(2, "train", *tiny_flags("bert", out, "--save_steps", "3", "--wandb_group", "cmp",
                                             "--wandb_tags", "a,b", "--run_name", f"run-{FAKE_TOKEN}", steps=6))
    files = offline_runs(out)
    assert len(files) == 1  # one run for the job: only global rank 0 opens it
    assert run_ids(files[0]) == {(out / "wandb_run_id").read_text()}
    cfg = config(files[0])
    assert cfg["run"]["world_size"] == 2 and cfg["run"]["nodes"] == 1 and cfg["run"]["ranks_per_node"] == 2
    assert cfg["run"]["parameters"] > 0 and cfg["run"]["tokens_per_step"] == 4 * 2 * 64
    assert cfg["deepspeed"]["zero_optimization"]["stage"] == 2 and cfg["deepspeed"]["train_batch_size"] == 8
    assert cfg["train"]["learning_rate"] == 2e-3 and cfg["model"]["model_type"] == "bert"
    assert set(cfg["versions"]) >= {"torch", "deepspeed", "transformers", "datasets", "dslm"}
    assert "git_commit" in cfg and cfg["run"]["data_fingerprint"] == results(out)["data_fingerprint"]
    rows = history(files[0])
    steps = [r["_step"] for r in rows]
    assert steps == sorted(set(steps))  # one log call per step, never backwards
    train_rows = [r for r in rows if "train/loss" in r]
    assert [r["_step"] for r in train_rows] == [2, 4, 6]
    for key in ("train/learning_rate", "train/grad_norm", "train/epoch", "train/tokens_seen",
                "perf/tokens_per_second", "perf/samples_per_second", "perf/step_time", "memory/rss_gb"):
        assert all(key in r for r in train_rows), key
    assert {"eval/loss", "eval/perplexity", "eval/accuracy"} <= set(rows[0]) and rows[0]["_step"] == 0
    assert any("checkpoint/save_seconds" in r and "checkpoint/size_mb" in r for r in rows)
    # metrics.jsonl carries the same figures
    logged = {m["step"]: m["train/loss"] for m in metrics(out) if "train/loss" in m}
    assert logged == {r["_step"]: r["train/loss"] for r in train_rows}
    assert "W&B: run" in proc.stdout or "W&B:" in proc.stdout
    # The fake secrets reach no file the run wrote, and no console output.
    for path in out.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert FAKE_KEY.encode() not in blob and FAKE_TOKEN.encode() not in blob, path
    console = (proc.stdout + proc.stderr).splitlines()
    assert not [line for line in console if FAKE_KEY in line]
    # DeepSpeed's launcher echoes its own command line (runner.py, launch.py); dslm's lines never
    # carry the token.
    leaks = [line for line in console if FAKE_TOKEN in line]
    assert all("runner.py" in line or "launch.py" in line for line in leaks), leaks



def test_kill_and_resume_continue_the_same_run_without_repeating_steps(tmp_path, offline):
    out = tmp_path / "out"
    proc = launch_background(out, steps=10, extra_env={"WANDB_MODE": "offline"})
    wait_for_step(out, 5, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    run_id = (out / "wandb_run_id").read_text()
    first = {r["_step"] for f in offline_runs(out) for r in history(f)}
    deepspeed(2, "train", *tiny_flags("bert", out, "--logging_steps", "1", "--save_steps", "2", steps=10))
    files = offline_runs(out)
    assert len(files) == 2 and {i for f in files for i in run_ids(f)} == {run_id}
    resumed = [r["_step"] for r in history(files[-1])]
    from_step = results(out)["resumed_from_step"]
    # The killed job's W&B process died with it (its unflushed rows are lost); the resumed session
    # continues after the checkpoint, one row per step, never backwards.
    assert resumed == list(range(from_step + 1, 11)), (first, resumed)


@pytest.mark.parametrize("how", ["WANDB_MODE=disabled", "--report_to none"])
def test_disabled_writes_no_wandb_files(tmp_path, monkeypatch, how):
    out = tmp_path / "out"
    extra = []
    if how.startswith("WANDB_MODE"):
        monkeypatch.setenv("WANDB_MODE", "disabled")
    else:
        monkeypatch.setenv("WANDB_MODE", "offline")
        extra = ["--report_to", "none"]
    dslm("train", *tiny_flags("bert", out, *extra, steps=2))
    assert not (out / "wandb").exists() and not (out / "wandb_run_id").exists()
    assert results(out)["train"]["steps"] == 2


def test_without_login_wandb_goes_offline_and_says_how_to_sync(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login
    out = tmp_path / "out"
    proc = dslm("train", *tiny_flags("bert", out, steps=2), extra_env={"WANDB_MODE": ""})  # unset
    assert proc.stdout.count("W&B: no login found, logging offline") == 1
    assert "wandb sync" in proc.stdout and len(offline_runs(out)) == 1


def test_wandb_file_reader_reads_what_wandb_wrote(tmp_path):
    code = (f"import wandb; r = wandb.init(mode='offline', dir={str(tmp_path)!r}, id='abc12345', "
            "config={'x': {'y': 1}}); [r.log({'m': i}, step=i) for i in range(3)]; r.finish()")
    run([sys.executable, "-c", code], cwd=tmp_path)
    f = offline_runs(tmp_path)[0]
    assert config(f)["x"] == {"y": 1} and [r["m"] for r in history(f)] == [0, 1, 2]
    assert run_ids(f) == {"abc12345"}


def artifacts(path: Path) -> list:
    return [r.artifact for r in records(path) if r.WhichOneof("record_type") == "artifact"]


def test_models_logged_as_artifacts_at_each_checkpoint_or_at_the_end(tmp_path, offline):
    every, end = tmp_path / "every", tmp_path / "end"
    deepspeed(2, "train", *tiny_flags("gpt2", every, "--save_steps", "2", "--eval_steps", "2",
                                      "--wandb_log_model", "checkpoint", steps=6))
    # The Trainer's variable, as people set it for HF runs
    deepspeed(2, "train", *tiny_flags("gpt2", end, "--save_steps", "2", "--eval_steps", "2", steps=6),
              extra_env={"WANDB_LOG_MODEL": "end"})
    logged = artifacts(offline_runs(every)[0])
    run_id = (every / "wandb_run_id").read_text()
    assert [(a.name, a.type) for a in logged] == [(f"model-{run_id}", "model")] * 3
    assert [sorted(a.aliases) for a in logged] == [["latest", "step-2"], ["latest", "step-4"],
                                                   ["final", "latest", "step-6"]]
    model_files = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    for artifact in logged:
        assert model_files <= {entry.path for entry in artifact.manifest.contents}
    metadata = [json.loads(a.metadata) for a in logged]
    by_step = {m["step"]: m for m in metrics(every) if "eval/loss" in m}
    for meta in metadata:
        assert meta["eval/loss"] == by_step[meta["step"]]["eval/loss"]
        assert meta["objective"] == "clm" and meta["model_type"] == "gpt2" and meta["tokens_seen"] > 0
    assert metadata[-1]["tokens_seen"] == results(every)["train"]["tokens"]
    final = artifacts(offline_runs(end)[0])
    assert [sorted(a.aliases) for a in final] == [["final", "latest", "step-6"]]
    # Consolidating a checkpoint for W&B changes nothing in the training: the same losses as without it
    assert train_losses(every) == train_losses(end)
    assert not list(every.glob(".artifact-*"))  # the consolidated copies are gone
