"""dist: what DeepSpeed leaves behind on a node after a run, killed or not."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from conftest import LAUNCH, ROOT, env, free_port, metrics, tiny_flags

from dslm import dist


def test_shm_segments_are_mapped_but_unlinked_so_a_killed_run_leaks_no_memory(tmp_path):
    out, port = tmp_path / "out", free_port()
    cmd = ["deepspeed", "--num_gpus", "2", "--master_port", str(port), LAUNCH,
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
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
        names = [dist.shm_segment(r).name for r in (0, 1)]
        for pid in pids:  # DeepSpeed's all-reduce really uses the segments: every rank maps both
            maps = Path(f"/proc/{pid}/maps").read_text()
            assert all(f"/dev/shm/{name} (deleted)" in maps for name in names), maps
        assert not any(dist.shm_segment(r).exists() for r in (0, 1))
    finally:
        os.environ.pop("MASTER_ADDR", None), os.environ.pop("MASTER_PORT", None)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not list(dist.SHM_DIR.glob(f"deepspeed_allreduce_buffer_*_{port}_*"))
