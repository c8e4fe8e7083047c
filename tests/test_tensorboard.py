"""TensorBoard beside W&B and metrics.jsonl: real 2-rank runs, their event files read with TensorBoard's reader."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from conftest import LAUNCH, deepspeed, deepspeed_exe, free_port, metrics, results, tiny_flags
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from test_faults import killed_run

pytestmark = pytest.mark.slow  # real jobs


def read(out: Path) -> EventAccumulator:
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    return events


def logged(out: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl's numbers by name, as (step, value) pairs in order."""
    by_key: dict[str, list[tuple[int, float]]] = {}
    for row in metrics(out):
        for key, value in row.items():
            if key not in ("step", "time") and isinstance(value, (int, float)) and not isinstance(value, bool):
                by_key.setdefault(key, []).append((row["step"], float(value)))
    return by_key


def test_the_same_names_steps_and_values_as_metrics_jsonl(tmp_path):
    out = tmp_path / "out"
    proc = deepspeed(2, "train", *tiny_flags("gpt2", out, "--report_to", "tensorboard", "--eval_steps", "3",
                                             "--save_steps", "3", steps=6))
    assert "TensorBoard: `tensorboard --logdir" in proc.stdout
    events = read(out)
    expected = logged(out)
    assert set(events.Tags()["scalars"]) == set(expected)
    assert {"train/loss", "eval/loss", "eval/perplexity", "perf/tokens_per_second", "checkpoint/save_seconds"} \
        <= set(expected)
    for key, pairs in expected.items():
        got = [(e.step, e.value) for e in events.Scalars(key)]
        assert [s for s, _ in got] == [s for s, _ in pairs], key
        assert [v for _, v in got] == pytest.approx([v for _, v in pairs], rel=1e-6), key  # float32 in the files
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1  # rank 0 only
    assert not (out / "wandb").exists()  # --report_to tensorboard leaves W&B out


def test_a_killed_run_resumed_shows_each_step_once(tmp_path):
    out = tmp_path / "out"
    cmd = [deepspeed_exe(), "--num_gpus", "2", "--master_port", str(free_port()), LAUNCH, "train",
           *tiny_flags("bert", out, "--logging_steps", "1", "--save_steps", "4", "--report_to", "tensorboard",
                       steps=10)]
    # The whole job killed at its 8th step (after the checkpoint of step 4, before the one of step 8).
    code, phase = killed_run(cmd, "step:8", tmp_path / "mark")
    assert code == -signal.SIGKILL and phase.startswith("step")
    written_before = {e.step for f in (out / "tensorboard").glob("events.*") for e in EventFileLoader(str(f)).Load()
                      if e.summary.value and e.summary.value[0].tag == "train/loss"}
    assert max(written_before) > 4  # the killed run logged steps after its checkpoint: they come again
    deepspeed(2, *cmd[cmd.index(LAUNCH) + 1:])
    res = results(out)
    assert res["resumed_from_step"] == 4
    # tokens/s of a resumed run: the tokens it trained itself over its own time
    at_checkpoint = next(m["train/tokens_seen"] for m in metrics(out) if m["step"] == 4 and "train/tokens_seen" in m)
    assert res["train"]["tokens_per_second"] * res["train"]["runtime_s"] == pytest.approx(
        res["train"]["tokens"] - at_checkpoint)
    assert res["train"]["wall_s"] > res["train"]["runtime_s"]  # from the first start, the killed session included
    steps = [e.step for e in read(out).Scalars("train/loss")]
    assert steps == list(range(1, 11))
    final = {m["step"]: m["train/loss"] for m in metrics(out) if "train/loss" in m}
    assert [e.value for e in read(out).Scalars("train/loss")] == pytest.approx([final[s] for s in steps], rel=1e-6)
