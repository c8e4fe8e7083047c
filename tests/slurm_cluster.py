"""A real SLURM cluster on this machine: munged, slurmctld and two slurmd (nodes n1 and n2).

Both slurmd run here, each with its own port and spool; their NodeAddr is 127.0.0.1, so the
node names themselves do not resolve, as on many clusters. Everything lives in a temporary
directory; SLURM_CONF points the commands at it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo")


def missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root to run slurmd (runs in .ci/run)"
    for program in PROGRAMS:
        if not shutil.which(program) and not Path("/usr/sbin", program).exists():
            return f"needs {program} (.ci/run installs slurm-wlm and munge with apt-get)"
    return None


def _free_ports(n: int) -> list[int]:
    """`n` consecutive free ports (slurmd ports are given as a range)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n > 65000:
            continue
        try:
            socks = []
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return list(range(base, base + n))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


def _sbin(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


@contextmanager
def cluster(workdir: Path) -> Iterator[dict[str, str]]:
    """Yields the environment (SLURM_CONF) under which sbatch, srun and scontrol use the cluster."""
    workdir.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool", "munge"):
        (workdir / sub).mkdir(exist_ok=True)
    ctld_port, *slurmd_ports = _free_ports(3)
    host = socket.gethostname()
    conf = workdir / "slurm.conf"
    conf.write_text(f"""ClusterName=dslmtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={workdir}/munge/munge.socket
StateSaveLocation={workdir}/state
SlurmdSpoolDir={workdir}/spool/%n
SlurmctldPidFile={workdir}/slurmctld.pid
SlurmdPidFile={workdir}/slurmd-%n.pid
SlurmctldLogFile={workdir}/slurmctld.log
SlurmdLogFile={workdir}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
KillWait=30
NodeName=n[1-2] NodeHostname={host} NodeAddr=127.0.0.1 Port=[{slurmd_ports[0]}-{slurmd_ports[1]}] CPUs=1 State=UNKNOWN
PartitionName=debug Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP
""")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    procs = []
    try:
        socket_path = workdir / "munge" / "munge.socket"
        subprocess.run([_sbin("munged"), "--force", f"--socket={socket_path}", f"--pid-file={workdir}/munged.pid",
                        f"--log-file={workdir}/munged.log", f"--seed-file={workdir}/munge/seed"], check=True, env=env)
        procs.append(subprocess.Popen([_sbin("slurmctld"), "-D", "-i", "-f", str(conf)], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        for node in ("n1", "n2"):
            (workdir / "spool" / node).mkdir(exist_ok=True)
            procs.append(subprocess.Popen([_sbin("slurmd"), "-D", "-N", node, "-f", str(conf)], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        deadline = time.time() + 60
        while True:
            info = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], env=env, capture_output=True, text=True)
            states = dict(line.split() for line in info.stdout.splitlines() if line.strip())
            if len(states) == 2 and all(s == "idle" for s in states.values()):
                break
            if time.time() > deadline:
                logs = "".join((workdir / f).read_text()[-2000:] for f in ("slurmctld.log",) if (workdir / f).exists())
                raise RuntimeError(f"SLURM nodes not idle: {info.stdout} {info.stderr}\n{logs}")
            time.sleep(0.5)
        yield env
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        pid = workdir / "munged.pid"
        if pid.exists():
            subprocess.run(["kill", pid.read_text().strip()], capture_output=True)
