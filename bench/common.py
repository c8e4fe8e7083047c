"""What every benchmark here shares: running a command as a whole process, medians, the machine, tables."""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = str(ROOT / "launch" / "train.py")


@dataclass
class Measured:
    returncode: int
    wall_s: float
    peak_rss_mb: float  # the largest process of the tree: one rank, since the launchers are small
    output: str
    started: float  # time.time() when the command was started


def _run_here(cmd: list[str], env: dict[str, str], cwd: str, timeout: float) -> dict[str, object]:
    """Inside a fresh interpreter (see `measure`): run `cmd`, then read the children's peak RSS."""
    import resource

    started = time.time()
    full_env = {**os.environ, **env, "BENCH_T0": repr(started), "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)
    wall = time.perf_counter() - start
    # ru_maxrss of the children is the largest single process reaped below us: the launchers wait
    # for their ranks, so it is the peak of the biggest rank.
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"returncode": proc.returncode, "wall_s": wall, "peak_rss_mb": peak, "output": proc.stdout,
            "started": started}


def measure(cmd: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT, timeout: float = 1800) -> Measured:
    """Run `cmd` as a whole process tree, in a fresh interpreter so that the peak RSS is its own
    (ru_maxrss only ever grows). BENCH_T0 tells the command when it was started."""
    wrapper = ("import json,sys;from bench.common import _run_here as r;"
               "print('BENCH_RESULT'+json.dumps(r(*json.loads(sys.argv[1]))))")
    args = json.dumps([cmd, env or {}, str(cwd), timeout])
    proc = subprocess.run([sys.executable, "-c", wrapper, args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout + 60, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)})
    _drop_shm_segments(cmd)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_RESULT")), None)
    if line is None:
        raise RuntimeError(f"benchmark wrapper failed: {proc.stderr[-3000:]}")
    return Measured(**json.loads(line[len("BENCH_RESULT"):]))


def _drop_shm_segments(cmd: list[str]) -> None:
    """The Trainer's runs leave DeepSpeed's CPU comm buffers in /dev/shm (66 MB per rank, in RAM; dslm unlinks
    its own): over a benchmark's dozens of runs they filled 6 GB and the next GPT-2 124M run was OOM-killed."""
    if "--master_port" in cmd:
        port = cmd[cmd.index("--master_port") + 1]
        for path in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*"):
            path.unlink(missing_ok=True)


def as_ranks(script: str, args: object, nproc: int) -> object:
    """Run `script` again under DeepSpeed's launcher with the same arguments plus `--result`, and
    return the JSON its rank 0 wrote there (for benchmarks whose clock must run inside the ranks)."""
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    result = work / "result.json"
    result.unlink(missing_ok=True)
    forwarded = [f"--{k}={v}" for k, v in vars(args).items() if k not in ("result", "local_rank", "out")]
    m = measure(deepspeed_cmd(nproc, script, *forwarded, f"--result={result}"))
    if m.returncode != 0:
        raise SystemExit(f"{Path(script).name} failed ({m.returncode}):\n{m.output[-4000:]}")
    return json.loads(result.read_text())


def deepspeed_cmd(nproc: int, script: str, *args: str) -> list[str]:
    # The launcher as a module: the same as the `deepspeed` script, also where pip put the package
    # somewhere other than next to this interpreter (pip install --target on a lent GPU machine).
    return [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(nproc), "--master_port",
            str(free_port()), script, *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine() -> dict[str, object]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name()
    except ImportError:
        pass
    versions = {}
    for name in ("dslm", "torch", "deepspeed", "transformers", "accelerate", "datasets", "tokenizers"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "cpu": cpu, "cores": os.cpu_count(), "gpu": gpu,
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version(), "versions": versions}


def table(headers: list[str], rows: list[list[object]]) -> str:
    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: str | Path, payload: object) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2))


def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path
