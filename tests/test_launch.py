"""launch/multinode.sh: the environment file it hands DeepSpeed's launcher for the other nodes.

Real multi-host runs (network namespaces, sshd, pdsh) belong to the multi-node launch tests; here
a stand-in `deepspeed` on PATH records what the script passes it.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from dslm.config import all_fields

FAKE = """#!/usr/bin/env bash
cp "$DS_ENV_FILE" "{out}/env_file"
stat -c %a "$DS_ENV_FILE" > "{out}/mode"
printf '%s\\n' "$@" > "{out}/args"
"""


def run_script(tmp_path: Path, *args: str, extra_env: dict[str, str]) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "deepspeed"
    fake.write_text(FAKE.format(out=tmp_path))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, **extra_env, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return subprocess.run(["bash", str(ROOT / "launch" / "multinode.sh"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True)


@pytest.mark.slow
def test_multinode_forwards_wandb_hf_network_and_python_settings(tmp_path):
    (tmp_path / ".deepspeed_env").write_text("WANDB_PROJECT=stale\n")  # a leftover must not be used
    proc = run_script(tmp_path, str(ROOT / "hostfiles" / "localhost"), "--master_port", "29999", "train",
                      "--max_steps", "5",
                      extra_env={"WANDB_PROJECT": "cmp", "WANDB_API_KEY": "k" * 40, "HF_HOME": "/data/hf",
                                 "GLOO_SOCKET_IFNAME": "eth1", "TORCH_EXTENSIONS_DIR": "/cache/ext"})
    assert proc.returncode == 0, proc.stderr
    lines = set((tmp_path / "env_file").read_text().splitlines())
    assert {"WANDB_PROJECT=cmp", "HF_HOME=/data/hf", "GLOO_SOCKET_IFNAME=eth1",
            "TORCH_EXTENSIONS_DIR=/cache/ext", f"WANDB_API_KEY={'k' * 40}"} <= lines
    assert any(line.startswith("PATH=") for line in lines)
    assert "WANDB_PROJECT=stale" not in lines
    assert (tmp_path / "mode").read_text().strip() == "600"
    args = (tmp_path / "args").read_text().split()
    # Launcher options go before the script, dslm's after; dslm has checked every host itself.
    assert args[:9] == ["--hostfile", str(ROOT / "hostfiles" / "localhost"), "--no_ssh_check", "--log_level",
                        "warning", "--master_port", "29999", "--master_addr", "localhost"]
    assert args[9:] == [str(ROOT / "launch" / "train.py"), "train", "--max_steps", "5"]
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("dslm-deepspeed-env.*"))  # removed after


@pytest.mark.slow
def test_multinode_refuses_a_bad_hostfile_before_launching(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("localhost slots=2\nlocalhost slots=2\n")
    proc = run_script(tmp_path, str(hosts), "train", extra_env={})
    assert proc.returncode == 2 and "line 2: localhost is already on line 1" in proc.stderr
    assert not (tmp_path / "args").exists()  # the launcher never started


@pytest.mark.slow
def test_multinode_names_a_missing_hostfile(tmp_path):
    proc = run_script(tmp_path, "nope", "train", extra_env={})
    assert proc.returncode == 2 and "hostfile nope not found" in proc.stderr


def test_sweep_uses_known_flags():
    """launch/sweep.yaml sweeps flags dslm knows, by its eval loss."""
    sweep = yaml.safe_load((ROOT / "launch" / "sweep.yaml").read_text())
    assert set(sweep["parameters"]) <= set(all_fields())
    assert sweep["metric"]["name"] == "eval/loss"
    assert "dslm train" in " ".join(sweep["command"])
