"""dist: what DeepSpeed leaves behind on a node after a run, killed or not."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import LAUNCH, ROOT, deepspeed_exe, env, free_port, metrics, tiny_flags

from dslm import dist
from dslm.errors import ConfigError


@pytest.mark.slow
def test_shm_segments_are_mapped_but_unlinked_so_a_killed_run_leaks_no_memory(tmp_path):
    out, port = tmp_path / "out", free_port()
    cmd = [deepspeed_exe(), "--num_gpus", "2", "--master_port", str(port), LAUNCH,
           "train", *tiny_flags("gpt2", out, "--objective", "clm", "--logging_steps", "1", steps=400)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 300
        while not ((out / "metrics.jsonl").exists() and any("train/loss" in m for m in metrics(out))):
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() else "no step"
            time.sleep(0.2)
        pids = subprocess.run(["pgrep", "-s", str(proc.pid), "-f", "local_rank="], capture_output=True,
                              text=True).stdout.split()
        assert len(pids) == 2
        segments = [dist.shm_segment("127.0.0.1", str(port), r) for r in (0, 1)]
        for pid in pids:  # DeepSpeed's all-reduce really uses the segments: every rank maps both
            maps = Path(f"/proc/{pid}/maps").read_text()
            assert all(f"{segment} (deleted)" in maps for segment in segments), maps
        assert not any(segment.exists() for segment in segments)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not list(dist.SHM_DIR.glob(f"deepspeed_allreduce_buffer_*_{port}_*"))


@pytest.mark.parametrize("given, expected", [
    ({}, {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}),
    # A PyTorchJob or a Kubernetes pod: one process per node, no LOCAL_RANK.
    ({"MASTER_ADDR": "m", "MASTER_PORT": "1", "RANK": "3", "WORLD_SIZE": "4"},
     {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "MASTER_ADDR": "m"}),
    ({"MASTER_ADDR": "m", "RANK": "5", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"},
     {"LOCAL_RANK": "1", "MASTER_PORT": "29500"}),
    # One srun task per rank: SLURM's variables only.
    ({"MASTER_ADDR": "m", "SLURM_PROCID": "3", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "4",
      "SLURM_LOCALID": "1", "SLURM_STEP_TASKS_PER_NODE": "2(x2)"},
     {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}),
    # The batch script itself is not a rank of a step: a one-rank run; so is a one-task step.
    ({"SLURM_PROCID": "0", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "1"}, {"RANK": "0", "WORLD_SIZE": "1"}),
    ({"MASTER_ADDR": "m", "SLURM_PROCID": "0", "SLURM_NTASKS": "4"}, {"RANK": "0", "WORLD_SIZE": "1"}),
    ({"RANK": "2", "LOCAL_RANK": "2", "WORLD_SIZE": "4", "MASTER_ADDR": "a", "MASTER_PORT": "9"},
     {"RANK": "2", "LOCAL_RANK": "2", "WORLD_SIZE": "4", "MASTER_PORT": "9"}),
])
def test_launcher_variables_are_completed(given, expected):
    env = dict(given)
    dist.fill_launcher_env(env)
    assert {k: env[k] for k in expected} == expected
    assert {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"} <= set(env)


def test_srun_tasks_without_a_master_address_are_refused():
    env = {"SLURM_PROCID": "1", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "4"}
    with pytest.raises(ConfigError, match="srun started 4 tasks but MASTER_ADDR is not set"):
        dist.fill_launcher_env(env)
