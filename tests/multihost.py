"""Real separate hosts on one machine: network namespaces joined by a veth pair.

Each host has its own network stack, its own address on `eth0` (as in a pod or a VM), and its own
/etc/hosts (`ip netns exec` mounts /etc/netns/NAME/hosts over it), where the machine's hostname
resolves to the host's own address, as it does on a real node. Processes on different hosts reach
each other only over the veth link. The file system is shared, as on a cluster with shared storage.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

SUBNET = "10.77.0"
IFNAME = "eth0"


def missing(*programs: str) -> str | None:
    """Why multi-host tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces (runs in .ci/run)"
    for program in ("ip", *programs):
        if not shutil.which(program) and not Path("/usr/sbin", program).exists():
            return f"needs {program} (.ci/run installs it with apt-get)"
    probe = f"dslmprobe{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode != 0:
        return "cannot create network namespaces here"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@dataclass
class Host:
    netns: str
    address: str
    hostname: str
    names: list[str] = field(default_factory=list)  # more names every host resolves to this one

    def popen(self, cmd: list[str], env: dict[str, str], hostname: str | None = None,
              **kw) -> subprocess.Popen:
        """Start `cmd` on this host under its own hostname (or `hostname`, as a pod has its own)."""
        cmd = ["unshare", "--uts", "sh", "-c", f'hostname {hostname or self.hostname} && exec "$@"', "sh", *cmd]
        return subprocess.Popen(["ip", "netns", "exec", self.netns, *cmd], env=env, start_new_session=True, **kw)

    def pids(self) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def rank_pids(self) -> list[int]:
        """Training ranks running on this host (not the launchers that started them)."""
        found = []
        for pid in self.pids():
            try:
                args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
            except OSError:
                continue
            if Path(args[0]).name in ("bash", "sh", "unshare", "ip", "pdsh", "ssh"):
                continue
            launcher = any(a == "deepspeed.launcher.launch" or Path(a).name in ("torchrun", "deepspeed")
                           for a in args)
            if not launcher and any(a.endswith("launch/train.py") for a in args):
                found.append(pid)
        return found


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _hosts_file(host: Host, hosts: list[Host]) -> str:
    # Processes outside a UTS namespace of their own (sshd and what it starts) keep the machine's
    # hostname: on each host it resolves to that host's address.
    # Listed after the hosts' own names: the first name of an address is its canonical name.
    lines = ["127.0.0.1 localhost"] + [f"{h.address} {h.hostname} {' '.join(h.names)}".strip() for h in hosts]
    lines.append(f"{host.address} {socket.gethostname()}")
    return "\n".join(lines) + "\n"


@contextmanager
def two_hosts(names: tuple[list[str], list[str]] = ([], [])) -> Iterator[list[Host]]:
    tag = f"dslm{os.getpid() % 100000}"
    hosts = [Host(f"{tag}h{i}", f"{SUBNET}.{i + 1}", f"node{i}", list(names[i])) for i in range(2)]
    try:
        for h in hosts:
            _ip("netns", "add", h.netns)
            _ip("-n", h.netns, "link", "set", "lo", "up")
        _ip("link", "add", f"{tag}a", "type", "veth", "peer", "name", f"{tag}b")
        for h, end in zip(hosts, "ab", strict=True):
            _ip("link", "set", f"{tag}{end}", "netns", h.netns)
            _ip("-n", h.netns, "link", "set", f"{tag}{end}", "name", IFNAME)
            _ip("-n", h.netns, "addr", "add", f"{h.address}/24", "dev", IFNAME)
            _ip("-n", h.netns, "link", "set", IFNAME, "up")
        for h in hosts:
            etc = Path("/etc/netns") / h.netns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(_hosts_file(h, hosts))
        yield hosts
    finally:
        for h in hosts:
            kill(h)
            subprocess.run(["ip", "netns", "del", h.netns], capture_output=True)
            shutil.rmtree(Path("/etc/netns") / h.netns, ignore_errors=True)


def kill(host: Host) -> None:
    for pid in host.pids():
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextmanager
def sshd(hosts: list[Host], workdir: Path) -> Iterator[Path]:
    """An sshd on each host with a key made for the test; yields a bin dir whose `ssh` uses it.

    The `ssh` wrapper first on PATH adds `-F <test config>`: pdsh and DeepSpeed call plain `ssh`,
    and ~/.ssh stays untouched.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    key, host_key = workdir / "id_ed25519", workdir / "host_ed25519"
    for path in (key, host_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    (workdir / "authorized_keys").write_text(Path(f"{key}.pub").read_text())
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    sshd_bin = shutil.which("sshd") or "/usr/sbin/sshd"
    for h in hosts:
        config = workdir / f"sshd_{h.netns}"
        config.write_text(f"ListenAddress {h.address}\nPort 22\nHostKey {host_key}\nPidFile {workdir}/{h.netns}.pid\n"
                          f"AuthorizedKeysFile {workdir}/authorized_keys\nPermitRootLogin prohibit-password\n"
                          "PasswordAuthentication no\nKbdInteractiveAuthentication no\nStrictModes no\nUsePAM no\n")
        subprocess.run(["ip", "netns", "exec", h.netns, sshd_bin, "-f", str(config), "-E", f"{workdir}/{h.netns}.log"],
                       check=True)
    client = workdir / "ssh_config"
    client.write_text(f"Host *\n  IdentityFile {key}\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
                      f"  LogLevel ERROR\n  BatchMode yes\n  User {getpass.getuser()}\n")
    bin_dir = workdir / "bin"
    bin_dir.mkdir(exist_ok=True)
    wrapper = bin_dir / "ssh"
    wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("ssh")} -F {client} "$@"\n')
    wrapper.chmod(0o755)
    deadline = time.time() + 20
    for h in hosts:  # sshd daemonizes before it listens: wait until each one answers
        while subprocess.run(["ip", "netns", "exec", hosts[0].netns, str(wrapper), h.address, "true"],
                             capture_output=True).returncode != 0:
            assert time.time() < deadline, f"sshd on {h.address} did not come up: see {workdir}/{h.netns}.log"
            time.sleep(0.3)
    try:
        yield bin_dir
    finally:
        for h in hosts:
            pid = workdir / f"{h.netns}.pid"
            with suppress(OSError, ValueError):
                os.kill(int(pid.read_text()), signal.SIGTERM)
