"""dslm hostfile: parsing and checks, and hostfiles written for SLURM and Kubernetes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from conftest import ROOT, dslm

from dslm import hostfile
from dslm.errors import ConfigError


def test_the_shipped_hostfiles_parse():
    assert hostfile.parse((ROOT / "hostfiles" / "localhost").read_text()) == [("localhost", 2)]
    assert hostfile.parse((ROOT / "hostfiles" / "example").read_text()) == [("node1", 8), ("node2", 8)]


def test_comments_and_blank_lines_are_ignored():
    assert hostfile.parse("# head\n\n10.0.0.1 slots=2  # gpu node\n  n2 slots=1\n") == [("10.0.0.1", 2), ("n2", 1)]


@pytest.mark.parametrize("text, message", [
    ("n1 slots=2\nn1 slots=2\n", "line 2: n1 is already on line 1"),
    ("n1 slots=0\n", "line 1: n1 has slots=0"),
    ("n1 slots=2\nn2 slot=2\n", "line 2: 'n2 slot=2' is not `HOST slots=N`"),
    ("n1\n", "line 1: 'n1' is not `HOST slots=N`"),
    ("n1 slots=-1\n", "is not `HOST slots=N`"),
    ("# nothing\n", "lists no hosts"),
])
def test_bad_hostfiles_are_refused_naming_the_line(text, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        hostfile.parse(text)


@pytest.mark.slow
def test_check_from_the_command_line(tmp_path):
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text("localhost slots=2\n")
    bad.write_text("a slots=1\na slots=1\n")
    assert "1 host(s), 2 rank(s)" in dslm("hostfile", "check", str(good)).stderr
    proc = dslm("hostfile", "check", str(bad), check=False)
    assert proc.returncode == 2 and proc.stderr.strip().endswith("list each host once with all its slots")
    assert "Traceback" not in proc.stderr
    proc = dslm("hostfile", "check", str(tmp_path / "missing"), check=False)
    assert proc.returncode == 2 and "not found" in proc.stderr


@pytest.mark.slow
def test_unreachable_hosts_are_named(tmp_path, monkeypatch):
    """A stand-in ssh that reaches only `up`: the check asks every host, as pdsh will, with its options."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ssh = bin_dir / "ssh"
    ssh.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/calls\nfor a; do last=$a; done\n'
                   '[ "$(echo "$@" | grep -o " up true$")" = " up true" ]\n')
    ssh.chmod(ssh.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("PDSH_SSH_ARGS_APPEND", "-p 2222 -F /etc/test_ssh_config")
    assert hostfile.unreachable(["up", "down1", "localhost", "down2"]) == ["down1", "down2"]
    calls = (tmp_path / "calls").read_text().splitlines()
    assert len(calls) == 3 and all("-p 2222 -F /etc/test_ssh_config" in c and "BatchMode=yes" in c for c in calls)
    path = tmp_path / "hosts"
    path.write_text("up slots=1\ndown1 slots=1\n")
    with pytest.raises(ConfigError, match="not reachable by passwordless ssh: down1"):
        hostfile.check(str(path), ssh=True)


@pytest.mark.slow
def test_k8s_hostfile_names_the_pods_of_the_indexed_job(tmp_path):
    out = tmp_path / "hostfile"
    dslm("hostfile", "k8s", "--name", "dslm", "--service", "dslm", "--nodes", "3", "--slots", "8", "--out", str(out))
    assert out.read_text() == "dslm-0.dslm slots=8\ndslm-1.dslm slots=8\ndslm-2.dslm slots=8\n"


@pytest.mark.slow
def test_slurm_hostfile_uses_node_addresses(tmp_path, monkeypatch):
    """A stand-in scontrol answers as SLURM does; a node whose name does not resolve gets its NodeAddr."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text('#!/bin/sh\nif [ "$2" = hostnames ]; then printf "gpu1\\ngpu2\\ngpu3\\n"; exit; fi\n'
                        'case $4 in gpu1) a=10.1.0.1;; gpu2) a=10.1.0.2;; *) a=10.1.0.2;; esac\n'
                        'echo "NodeName=$4 Arch=x86_64 NodeAddr=$a NodeHostName=$4 State=IDLE"\n')
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[1-3]")
    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "4")
    out = tmp_path / "hostfile"
    hostfile.slurm(out=str(out))
    # gpu2 and gpu3 share an address (two slurmd on one host): an address may appear only once.
    assert Path(out).read_text() == "10.1.0.1 slots=4\ngpu2 slots=4\ngpu3 slots=4\n"
    monkeypatch.delenv("SLURM_JOB_NODELIST")
    with pytest.raises(ConfigError, match="inside a SLURM job"):
        hostfile.slurm()


@pytest.mark.parametrize("name", ["localhost", "example", "slurm", "kubernetes"])
def test_every_shipped_hostfile_passes_the_check(name):
    hostfile.check(str(ROOT / "hostfiles" / name))


def test_node_prints_what_node_sh_starts(tmp_path, capsys):
    path = tmp_path / "hosts"
    path.write_text("a slots=2\nb slots=3\nc slots=1\n")
    hostfile.node(str(path), 1)
    assert capsys.readouterr().out == "6 2 3\n"  # world size, this node's first rank, its slots
    with pytest.raises(ConfigError, match=r"node rank 3 is not one of the 3 nodes in .*: give 0 to 2"):
        hostfile.node(str(path), 3)
