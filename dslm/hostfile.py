"""`dslm hostfile`: write DeepSpeed hostfiles from SLURM or a Kubernetes service, and check them before a launch.

DeepSpeed's own parser skips lines it does not understand and only fails later, on another node or
in a hang at init; these checks say what is wrong with the file, on which line, before anything starts.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from dslm import atomic
from dslm.errors import ConfigError

LINE = re.compile(r"^(\S+)\s+slots=(\d+)$")
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}


def parse(text: str, source: str = "hostfile") -> list[tuple[str, int]]:
    """(host, slots) per line, or a ConfigError naming the first bad line."""
    hosts: list[tuple[str, int]] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = LINE.match(line)
        if not match:
            raise ConfigError(f"{source} line {number}: {raw.strip()!r} is not `HOST slots=N`: "
                              f"see hostfiles/README.md")
        host, slots = match.group(1), int(match.group(2))
        if slots == 0:
            raise ConfigError(f"{source} line {number}: {host} has slots=0: give it at least one slot or remove it")
        if host in seen:
            raise ConfigError(f"{source} line {number}: {host} is already on line {seen[host]}: list each host once "
                              f"with all its slots")
        seen[host] = number
        hosts.append((host, slots))
    if not hosts:
        raise ConfigError(f"{source} lists no hosts: add lines `HOST slots=N`")
    return hosts


def render(hosts: list[tuple[str, int]]) -> str:
    return "".join(f"{host} slots={slots}\n" for host, slots in hosts)


def unreachable(hosts: list[str], timeout_s: int = 10) -> list[str]:
    """Hosts that passwordless ssh does not reach, as pdsh will try them.

    DeepSpeed's runner checks only the first host and ignores PDSH_SSH_ARGS_APPEND (ports, configs,
    keys); this check passes the same options pdsh will, to every host.
    """
    extra = shlex.split(os.environ.get("PDSH_SSH_ARGS_APPEND", ""))
    procs = {host: subprocess.Popen(["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={timeout_s}", *extra,
                                     host, "true"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
             for host in hosts if host not in LOCAL_HOSTS}
    failed = []
    for host, proc in procs.items():
        try:
            if proc.wait(timeout=timeout_s + 5) != 0:
                failed.append(host)
        except subprocess.TimeoutExpired:
            proc.kill()
            failed.append(host)
    return failed


def check(path: str, ssh: bool = False) -> None:
    """Check a hostfile: syntax, duplicate hosts, zero slots; with --ssh, that every host is reachable.

    Args:
        path: the hostfile
        ssh: also try passwordless ssh to every host (with PDSH_SSH_ARGS_APPEND), as pdsh will
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"hostfile {path} not found: see hostfiles/README.md for the format")
    hosts = parse(file.read_text(), source=path)
    if ssh and len(hosts) > 1:
        bad = unreachable([host for host, _ in hosts])
        if bad:
            raise ConfigError(f"not reachable by passwordless ssh: {', '.join(bad)}: check `ssh {bad[0]} true` "
                              f"works from this node (keys, known_hosts, PDSH_SSH_ARGS_APPEND), or start each node "
                              f"with launch/node.sh")
    total = sum(slots for _, slots in hosts)
    print(f"{path}: {len(hosts)} host(s), {total} rank(s)", file=sys.stderr)


def _write(hosts: list[tuple[str, int]], out: str | None) -> None:
    text = render(hosts)
    if out is None:
        print(text, end="")
        return
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic.write_file(Path(out), text)


def _scontrol(*args: str) -> str:
    try:
        return subprocess.run(["scontrol", *args], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ConfigError(f"`scontrol {' '.join(args)}` failed ({exc}): run inside a SLURM allocation") from None


def slurm_nodes() -> list[tuple[str, str]]:
    """(node name, node address) of each node of the current SLURM job, in job order."""
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodelist:
        raise ConfigError("SLURM_JOB_NODELIST is not set: run `dslm hostfile slurm` inside a SLURM job")
    nodes = []
    for name in _scontrol("show", "hostnames", nodelist).split():
        # Node names need not resolve on the compute nodes; NodeAddr is what slurmd itself uses.
        match = re.search(r"\bNodeAddr=(\S+)", _scontrol("show", "node", "-o", name))
        nodes.append((name, match.group(1) if match else name))
    return nodes


def slurm(out: str | None = None, slots: int | None = None) -> None:
    """Write the hostfile of the current SLURM job: one line per node, by node address.

    Args:
        out: where to write it (default: print it)
        slots: ranks per node (default: SLURM_GPUS_ON_NODE, else SLURM_NTASKS_PER_NODE, else 1)
    """
    if slots is None:
        slots = int(os.environ.get("SLURM_GPUS_ON_NODE") or os.environ.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0])
    nodes = slurm_nodes()
    addresses = [addr for _, addr in nodes]
    # An address may appear once in a hostfile; several slurmd sharing one host keep their names.
    hosts = [(addr if addresses.count(addr) == 1 else name, slots) for name, addr in nodes]
    _write(parse(render(hosts), source="the SLURM job's hostfile"), out)


def k8s(name: str, service: str, nodes: int, slots: int = 1, out: str | None = None) -> None:
    """Write the hostfile of a Kubernetes Indexed Job behind a headless Service: pods NAME-0.SERVICE ...

    Args:
        name: the Job's name (its pods are NAME-0 ... NAME-(N-1))
        service: the headless Service (the pods' subdomain), optionally with its namespace: SVC or SVC.NAMESPACE
        nodes: the number of pods (the Job's completions)
        slots: ranks per pod (GPUs per pod)
        out: where to write it (default: print it)
    """
    if nodes < 1 or slots < 1:
        raise ConfigError(f"--nodes {nodes} --slots {slots}: both must be at least 1")
    _write([(f"{name}-{i}.{service}", slots) for i in range(nodes)], out)


def node(path: str, node_rank: int) -> None:
    """Print `WORLD_SIZE FIRST_RANK SLOTS` of node NODE_RANK in a hostfile: what launch/node.sh starts.

    Args:
        path: the hostfile (the same on every node, node 0 first)
        node_rank: this node's position in it, from 0
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"hostfile {path} not found: see hostfiles/README.md for the format")
    hosts = parse(file.read_text(), source=path)
    if not (isinstance(node_rank, int) and 0 <= node_rank < len(hosts)):
        raise ConfigError(f"node rank {node_rank!r} is not one of the {len(hosts)} nodes in {path}: give 0 to "
                          f"{len(hosts) - 1}")
    slots = [n for _, n in hosts]
    print(sum(slots), sum(slots[:node_rank]), slots[node_rank])


COMMANDS = {"check": check, "slurm": slurm, "k8s": k8s, "node": node}
