"""Inf/NaN on the real engine, 2 ranks: a real divergence, and NaN losses injected on one rank.

The injection (tests/faults/sitecustomize.py) turns one rank's loss into NaN at chosen steps, so
the NaN flows through backward, DeepSpeed's own overflow check and dslm's guard as a real one would.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import ROOT, deepspeed, metrics, results, tiny_flags
from safetensors.torch import load_file

from dslm import checkpoint, nonfinite

pytestmark = pytest.mark.slow  # real 2-rank jobs with injected NaNs

FAULTS = str(ROOT / "tests" / "faults")


def nan_at(rank: int, *steps: int) -> dict[str, str]:
    return {"PYTHONPATH": FAULTS, "DSLM_TEST_NAN": f"{rank}:{','.join(map(str, steps))}"}


def committed(out: Path) -> list[str]:
    root = out / "checkpoints"
    return sorted(p.name for p in root.iterdir() if (p / checkpoint.COMMIT).exists()) if root.exists() else []


def test_skip_drops_the_bad_steps_counts_them_and_trains_on(tmp_path):
    out = tmp_path / "out"
    proc = deepspeed(2, "train", *tiny_flags("bert", out, "--on_nan", "skip", "--logging_steps", "1", steps=8),
                     extra_env=nan_at(1, 3, 4))
    assert "warning: step 3: non-finite loss on rank 1 (nan); update skipped (1 so far" in proc.stdout
    assert "warning: step 4: non-finite loss on rank 1 (nan); update skipped (2 so far" in proc.stdout
    logged = {m["step"]: m for m in metrics(out) if "train/loss" in m}
    assert logged[3]["train/loss"] is None and logged[4]["train/loss"] is None  # no NaN in the logged mean
    assert [logged[s]["train/skipped_steps"] for s in (2, 3, 4, 8)] == [0, 1, 2, 2]
    assert all(math.isfinite(logged[s]["train/loss"]) for s in (1, 2, 5, 6, 7, 8))
    res = results(out)
    assert res["train"]["skipped_steps"] == 2 and math.isfinite(res["eval"]["eval/loss"])
    assert "2 skipped for inf/NaN" in proc.stdout
    weights = load_file(out / "final" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


@pytest.mark.parametrize("stage", ["zero0", "zero3"])  # ZeRO-0 fp32: dslm checks; ZeRO-3: DeepSpeed does
def test_stop_keeps_the_last_good_checkpoint_and_exits_3(tmp_path, stage):
    out = tmp_path / "out"
    proc = deepspeed(2, "train", *tiny_flags("bert", out, "--deepspeed", stage, "--save_steps", "2", steps=8),
                     extra_env=nan_at(1, 5), check=False)
    assert proc.returncode == nonfinite.NonFinite.exit_code, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("dslm:")]
    assert lines == [lines[0]] and lines[0].startswith("dslm: error: stopped at step 5: non-finite loss on rank 1")
    assert "step-00000004 stays the latest checkpoint" in lines[0] and "--on_nan skip" in lines[0]
    assert "Traceback" not in proc.stderr
    assert committed(out) == ["step-00000002", "step-00000004"]
    assert (out / "checkpoints" / "latest").read_text() == "step-00000004"
    assert not (out / "final").exists() and not (out / "results.json").exists()


def test_nan_weights_from_the_optimizer_never_reach_a_checkpoint(tmp_path):
    """Adam with epsilon 0 divides 0 by 0 for every weight whose gradient is 0: NaN weights after a
    step whose loss and gradients were finite. The check before the save refuses to write them."""
    out = tmp_path / "out"
    proc = deepspeed(2, "train", *tiny_flags("gpt2", out, "--bf16", "--adam_epsilon", "0", "--save_steps", "1",
                                             steps=6), check=False)
    assert proc.returncode == 3, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("dslm:")]
    assert lines == ["dslm: error: the weights hold inf/NaN at step 1: checkpoint step-00000001 is not written (no "
                     "checkpoint was committed before it); check --learning_rate, --adam_epsilon and the data"], lines
    assert "Traceback" not in proc.stderr and committed(out) == []
    assert json.loads((out / "run_config.json").read_text())["train"]["on_nan"] == "stop"


def test_weights_finite_sees_one_bad_number():
    module = torch.nn.Linear(3, 2)
    assert nonfinite.weights_finite(module)
    with torch.no_grad():
        module.weight[1, 2] = float("inf")
    assert not nonfinite.weights_finite(module)
