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


class FakeStore:
    """The few calls of torch's key-value store the waits use."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def check(self, keys: list[str]) -> bool:
        return all(k in self.data for k in keys)

    def get(self, key: str) -> bytes:
        return self.data[key]

    def set(self, key: str, value: str | bytes) -> None:
        self.data[key] = value.encode() if isinstance(value, str) else value


@pytest.fixture
def waiting(monkeypatch):
    """A waiter on a fake store with a fake clock: each poll advances it by 10 s and does not sleep."""
    store, clock = FakeStore(), [0.0]
    monkeypatch.setattr(dist, "_store", lambda: store)
    monkeypatch.setattr(dist.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(dist.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + 10))
    monkeypatch.setattr(dist, "LEADERS", [0, 2])
    return store, clock


def test_a_wait_without_timeout_ends_when_another_rank_says_it_failed(waiting):
    store, _ = waiting
    waiter = dist._Waiter("rank 0 to train the tokenizer")
    waiter.poll()
    store.set(dist._key("failed"), "rank 2 failed: local rank 0 failed to build the tokenized data")
    with pytest.raises(dist.PeerLost, match="^rank 2 failed: local rank 0 failed to build the tokenized data; this "
                                            "rank was waiting for rank 0 to train the tokenizer$"):
        waiter.poll()


def test_a_wait_without_timeout_ends_when_a_node_stops_beating(waiting):
    store, clock = waiting
    waiter = dist._Waiter("the other nodes to build the tokenized data")
    for beat in range(1, 30):  # rank 0 beats on, rank 2's count stays at 3
        store.set(dist._key("alive/0"), str(beat))
        store.set(dist._key("alive/2"), "3")
        try:
            waiter.poll()
        except dist.PeerLost as exc:
            assert str(exc).startswith("rank 2's node stopped answering (1")  # after more than 120 s
            assert clock[0] > dist.STALE_S
            return
    raise AssertionError("a node without a heartbeat was waited for forever")
