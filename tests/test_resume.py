"""Checkpoints on the real engine with 2 ranks: commit, corruption, rotation, exact resume, signals, export."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import LAUNCH, ROOT, deepspeed, deepspeed_exe, dslm, env, free_port, metrics, results, tiny_flags

from dslm import checkpoint
from dslm.errors import EXIT_STOPPED

pytestmark = pytest.mark.slow  # each test launches real 2-rank DeepSpeed jobs and kills them

STEPS = 8
FAULTS = str(ROOT / "tests" / "faults")  # test-only hooks (tests/faults/sitecustomize.py)


def flags(out: Path, *extra: str, steps: int = STEPS) -> list[str]:
    return ["train", *tiny_flags("bert", out, "--logging_steps", "1", "--save_steps", "2", *extra, steps=steps)]


def step_losses(out: Path) -> dict[int, float]:
    """The last logged loss of each step: a resumed run re-logs steps after its checkpoint."""
    return {m["step"]: m["train/loss"] for m in metrics(out) if "train/loss" in m}


def launch_background(out: Path, *extra: str, steps: int = STEPS, extra_env: dict | None = None):
    cmd = [deepspeed_exe(), "--num_gpus", "2", "--master_port", str(free_port()), LAUNCH,
           *flags(out, *extra, steps=steps)]
    return subprocess.Popen(cmd, cwd=ROOT, env={**env(), **(extra_env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_for_step(out: Path, step: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (out / "metrics.jsonl").exists() and any(m.get("step", 0) >= step and "train/loss" in m
                                                    for m in metrics(out)):
            return
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    raise AssertionError(f"no step {step} within {timeout}s")


def rank_pid(launcher: subprocess.Popen, rank: int) -> int:
    out = subprocess.run(["pgrep", "-s", str(launcher.pid), "-f", f"local_rank={rank}"], capture_output=True,
                         text=True).stdout.split()
    assert out, "rank process not found"
    return int(out[0])


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run, ZeRO-2: the losses every resumed run must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "out"
    deepspeed(2, *flags(out))
    return out


def test_a_committed_checkpoint_has_everything_to_continue(reference):
    tag_dir = reference / "checkpoints" / "step-00000006"
    assert checkpoint.verify(tag_dir) is None
    state = json.loads((tag_dir / checkpoint.STATE).read_text())
    assert state["step"] == 6 and state["samples"] == 6 * 4 * 2 and state["world_size"] == 2
    # the default --save_total_limit 2 keeps the newest two
    assert sorted(p.name for p in (reference / "checkpoints").glob("step-*")) == ["step-00000006", "step-00000008"]
    assert state["config"]["train"]["seed"] == 42 and state["data_fingerprint"]
    rng = torch.load(tag_dir / "rng_state_00001.pt", weights_only=True)  # our own files: no pickles
    assert set(rng) >= {"python", "numpy", "torch"}
    assert (reference / "checkpoints" / "latest").read_text() == "step-00000008"
    manifest = json.loads((tag_dir / checkpoint.MANIFEST).read_text())["files"]
    assert any(name.startswith("zero_pp_rank_1") for name in manifest)  # rank 1's shard is in it


def test_kill_of_one_rank_between_its_shards_and_the_commit(reference, tmp_path):
    out = tmp_path / "out"
    proc = launch_background(out, extra_env={"PYTHONPATH": FAULTS, "DSLM_TEST_KILL_RANK": "1:6"})
    proc.wait(timeout=300)
    assert proc.returncode != 0
    partial = out / "checkpoints" / "step-00000006"
    assert not (partial / checkpoint.COMMIT).exists()
    assert (out / "checkpoints" / "latest").read_text() == "step-00000004"
    deepspeed(2, *flags(out))
    assert results(out)["resumed_from_step"] == 4
    assert step_losses(out) == step_losses(reference)


def test_a_rank_killed_mid_run_ends_the_job_with_a_reason_and_the_restart_is_exact(reference, tmp_path):
    out = tmp_path / "out"
    proc = launch_background(out, "--dist_timeout", "5", steps=STEPS)
    wait_for_step(out, 5, proc)
    os.kill(rank_pid(proc, 1), signal.SIGKILL)
    killed = time.time()
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and time.time() - killed < 60  # far inside --dist_timeout: a dead peer is no hang
    said = [ln for ln in output.splitlines() if ln.startswith("dslm:")]
    assert len(said) == 1 and said[0].startswith("dslm: error: rank 0: stopped at step "), output[-4000:]
    assert "another rank is gone" in said[0] and "run the same command to resume" in said[0]
    assert "Traceback" not in output
    deepspeed(2, *flags(out))
    assert results(out)["resumed_from_step"] in (4, 6)
    assert step_losses(out) == step_losses(reference)


@pytest.mark.parametrize("damage", ["truncate", "delete_shard", "edit", "uncommit"])
def test_a_damaged_checkpoint_is_skipped_for_the_previous_good_one(reference, tmp_path, damage):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    newest = out / "checkpoints" / "step-00000008"
    shard = newest / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:100])
    elif damage == "delete_shard":
        shard.unlink()
    elif damage == "edit":
        state = json.loads((newest / checkpoint.STATE).read_text())
        (newest / checkpoint.STATE).write_text(json.dumps({**state, "step": 9}))
    else:
        (newest / checkpoint.COMMIT).unlink()
    warnings = []
    fingerprint = json.loads((newest / checkpoint.STATE).read_text())["run_fingerprint"]
    found = checkpoint.Checkpoints(out, fingerprint, warn=warnings.append).latest()
    assert found.path.name == "step-00000006"
    if damage != "uncommit":
        assert len(warnings) == 1 and "step-00000008" in warnings[0]


def test_rotation_keeps_the_newest_k_and_milestones_and_nothing_else(tmp_path):
    out = tmp_path / "out"
    extra = ("--save_total_limit", "2", "--save_milestone_steps", "4")
    deepspeed(2, *flags(out, *extra, steps=6))
    ours = sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step-0"))
    assert ours == ["step-00000004", "step-00000006"]  # 2 kept by the limit, 4 also a milestone
    stale = out / "checkpoints" / "step-00000100"  # another run's newer checkpoint in the same directory
    stale.mkdir()
    (stale / checkpoint.STATE).write_text(json.dumps({"run_fingerprint": "another-run", "step": 100}))
    (stale / checkpoint.COMMIT).write_text("{}")
    (out / "checkpoints" / "notes").mkdir()
    (out / "checkpoints" / "step-notes.txt").write_text("mine")
    proc = deepspeed(2, *flags(out, *extra, steps=10))  # resume (not from the other run's step 100), rotate
    assert "belongs to another run" in proc.stdout
    assert results(out)["resumed_from_step"] == 6
    names = {p.name for p in (out / "checkpoints").iterdir()}
    assert {"step-00000100", "notes", "step-notes.txt"} <= names  # untouched
    ours = sorted(n for n in names if n.startswith("step-0") and n != "step-00000100")
    assert ours == ["step-00000004", "step-00000008", "step-00000010"]


def test_a_fresh_start_over_another_runs_checkpoints_is_refused(reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference / "checkpoints", out / "checkpoints")
    proc = deepspeed(2, "train", *tiny_flags("bert", out, "--seed", "7", steps=2), check=False)
    assert proc.returncode == 2 and "holds checkpoints of another run" in proc.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == sorted(
        p.name for p in (reference / "checkpoints").iterdir())


def test_sigterm_to_one_rank_saves_on_all_ranks_and_the_next_start_resumes(tmp_path):
    out = tmp_path / "out"
    proc = launch_background(out, steps=400)
    wait_for_step(out, 3, proc)
    os.kill(rank_pid(proc, 1), signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_STOPPED, output
    assert "run the same command to resume" in output
    stopped_at = json.loads((out / "checkpoints" / (out / "checkpoints" / "latest").read_text()
                             / checkpoint.STATE).read_text())["step"]
    assert stopped_at >= 3
    deepspeed(2, *flags(out, "--save_steps", "0", steps=stopped_at + 2))
    assert results(out)["resumed_from_step"] == stopped_at


def test_world_size_2_to_1_to_2(tmp_path):
    out = tmp_path / "out"
    deepspeed(2, *flags(out, "--save_total_limit", "0", steps=4))
    before = step_losses(out)[4]
    deepspeed(1, *flags(out, "--save_total_limit", "0", steps=8))
    one = results(out)
    assert one["resumed_from_step"] == 4 and one["world_size"] == 1
    assert (out / "checkpoints" / "step-00000004" / "universal").is_dir()
    deepspeed(2, *flags(out, "--save_total_limit", "0", steps=12))
    losses = step_losses(out)
    assert results(out)["resumed_from_step"] == 8
    assert abs(losses[5] - before) < 0.5 and abs(losses[9] - losses[8]) < 0.5  # continues, no restart
    assert losses[12] < losses[1]
    state = json.loads((out / "checkpoints" / "step-00000012" / checkpoint.STATE).read_text())
    assert state["samples"] == 4 * (4 * 2) + 4 * 4 + 4 * (4 * 2)  # the data position carried over in samples


def test_export_of_zero2_and_zero3_checkpoints_matches_the_engine(reference, tmp_path):
    from conftest import reload_and_evaluate

    out3 = tmp_path / "z3"
    deepspeed(2, "train", *tiny_flags("gpt2", out3, "--deepspeed", "zero3", "--save_steps", "0", steps=4))
    for out, objective in ((reference, "mlm"), (out3, "clm")):
        last = out / "checkpoints" / (out / "checkpoints" / "latest").read_text()
        exported = tmp_path / f"export-{out.name}"
        proc = dslm("export", str(last), str(exported))
        assert "exported" in proc.stdout
        shutil.rmtree(out / "final")
        exported.rename(out / "final")
        assert reload_and_evaluate(out, objective) == pytest.approx(results(out)["eval"]["eval/loss"], rel=1e-5)


def test_out_of_disk_space_keeps_the_previous_checkpoint(tmp_path):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs")
    out = tmp_path / "small"
    out.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1600k", "tmpfs", str(out)]).returncode != 0:
        pytest.skip("cannot mount tmpfs here")
    try:
        proc = deepspeed(2, *flags(out, "--cache_dir", str(tmp_path / "cache"), steps=12), check=False)
        assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
        err = proc.stderr
        assert "dslm: error:" in err and ("not enough disk space" in err or "no space left on device" in err)
        assert "Traceback" not in err
        committed = [p for p in (out / "checkpoints").iterdir() if (p / checkpoint.COMMIT).exists()]
        assert committed and all(checkpoint.verify(p) is None for p in committed)
        assert (out / "checkpoints" / "latest").read_text() == max(p.name for p in committed)
    finally:
        subprocess.run(["umount", str(out)])


def test_export_refuses_a_non_empty_directory_and_a_zero_stage_change(reference, tmp_path):
    last = reference / "checkpoints" / "step-00000008"
    proc = dslm("export", str(last), str(reference), check=False)
    assert proc.returncode == 1 and "exists and is not empty" in proc.stderr
    assert (reference / "metrics.jsonl").exists()
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    proc = deepspeed(2, *flags(out, "--deepspeed", "zero3", steps=10), check=False)
    assert proc.returncode == 2 and "was saved with ZeRO-2 and this run uses ZeRO-3" in proc.stderr


@pytest.mark.parametrize("workers", ["0", "3"])
def test_a_stream_resumes_exactly_where_it_stopped(tmp_path, text_file, workers):
    """--streaming with 2 ranks (and DataLoader workers): a run killed at step 7 and run again (from its
    checkpoint of step 5) gives the losses of a run that never stopped; each reader resumes at its position."""
    extra = ("--streaming", "--train_file", str(text_file), "--dataloader_num_workers", workers,
             "--per_device_train_batch_size", "2", "--save_steps", "5", "--max_seq_length", "32")
    reference, out = tmp_path / "reference", tmp_path / "out"
    deepspeed(2, *flags(reference, *extra, steps=10))
    killed = launch_background(out, *extra, steps=10, extra_env={"PYTHONPATH": FAULTS, "DSLM_TEST_KILL": "step:7"})
    assert killed.wait(timeout=300) != 0
    deepspeed(2, *flags(out, *extra, steps=10))
    state = json.loads((out / "checkpoints" / "step-00000005" / "dslm_state.json").read_text())
    readers = 2 * max(1, int(workers))
    assert state["stream"]["readers"] == readers and len(state["stream"]["states"]) == readers
    assert results(out)["resumed_from_step"] == 5
    assert step_losses(out) == step_losses(reference)
