"""Process-group setup and the few rank helpers the rest of dslm needs."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import socket
import time
from collections.abc import Callable, MutableMapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from dslm import atomic
from dslm.errors import ConfigError, PeerLost, first_line


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", 0))


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    return rank() == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fill_launcher_env(env: MutableMapping[str, str]) -> None:
    """Complete the rank variables the process group needs from whatever launched this process.

    deepspeed and torchrun set them all. An environment launcher (a Kubernetes pod, a PyTorchJob,
    plain variables) may set only MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE, and without LOCAL_RANK
    DeepSpeed falls back to MPI discovery and fails on a missing mpi4py. `srun` sets only its own
    SLURM_* variables. A process with none of them is a one-rank run.
    """
    if "RANK" not in env and "SLURM_STEP_ID" in env:  # a task of an srun step (the batch script has no step id)
        tasks = env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1"))
        if "MASTER_ADDR" in env:  # one task per rank (launch/slurm.sbatch exports MASTER_ADDR for the step)
            env.update(RANK=env.get("SLURM_PROCID", "0"), WORLD_SIZE=tasks, LOCAL_RANK=env.get("SLURM_LOCALID", "0"))
            env.setdefault("LOCAL_WORLD_SIZE", env.get("SLURM_STEP_TASKS_PER_NODE", "1").split("(")[0].split(",")[0])
        elif int(tasks) > 1:
            raise ConfigError(f"srun started {tasks} tasks but MASTER_ADDR is not set, so each would train alone: "
                              f"use launch/slurm.sbatch, or export MASTER_ADDR (the first node's address) before srun")
    if "RANK" not in env:  # a plain process, not started by any launcher
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        env.setdefault("MASTER_PORT", str(_free_port()))
    if "LOCAL_RANK" not in env:
        local = env.get("OMPI_COMM_WORLD_LOCAL_RANK")
        if local is None and env.get("LOCAL_WORLD_SIZE", "").isdigit():
            local = str(int(env["RANK"]) % int(env["LOCAL_WORLD_SIZE"]))
        env["LOCAL_RANK"] = local or "0"  # one process per node, as pods usually run
    env.setdefault("WORLD_SIZE", "1")
    env.setdefault("MASTER_PORT", "29500")


TIMEOUT_MINUTES = [30.0]  # --dist_timeout, as init() set it: how often a rank waiting without a timeout says so


def init(timeout_minutes: float = 30.0) -> None:
    """Join the launcher's process group, or make a one-rank group for a plain `dslm train`
    (`fill_launcher_env` first completes the variables it reads)."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    backend = "gloo" if get_accelerator().device_name() == "cpu" else None
    timeout = timedelta(minutes=timeout_minutes)
    TIMEOUT_MINUTES[0] = timeout_minutes
    # DeepSpeed builds its data-parallel groups with new_group() and no timeout, and torch gives
    # such groups its module default (30 min), not the world group's: set that default too, or a
    # hung rank holds the others for 30 minutes whatever --dist_timeout says.
    import torch.distributed.distributed_c10d as c10d

    c10d.default_pg_timeout = timeout
    if isinstance(getattr(c10d, "default_pg_nccl_timeout", None), timedelta):
        c10d.default_pg_nccl_timeout = timeout
    if backend == "gloo" and is_main() and not _shm_op_built():
        print("DeepSpeed: compiling its shared-memory comm op, once for this machine (about a minute)", flush=True)
    # On CPUs it loads its shm comm op and prints that it "built successfully" on every rank, each run; what it
    # printed is shown when it fails (a compiler's output, say).
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            deepspeed.init_distributed(dist_backend=backend, timeout=timeout)
    except BaseException:
        print(printed.getvalue(), end="", flush=True)
        raise
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(cpu_threads(os.environ))
    _unlink_shm_segment()
    _start_heartbeat()


def _shm_op_built() -> bool:
    """Whether DeepSpeed's CPU comm op is compiled where its JIT build looks (TORCH_EXTENSIONS_DIR)."""
    try:
        from torch.utils.cpp_extension import _get_build_directory

        return any(Path(_get_build_directory("deepspeed_shm_comm", verbose=False)).glob("*.so"))
    except Exception:  # a private helper of torch's: when it changes, say nothing rather than fail
        return True


def ranks_per_node(env: MutableMapping[str, str] = os.environ) -> int:
    """How many ranks share this node: DeepSpeed's launcher says so in LOCAL_SIZE, torchrun and srun in
    LOCAL_WORLD_SIZE; one where neither is set."""
    return max(int(env.get("LOCAL_WORLD_SIZE") or env.get("LOCAL_SIZE") or 1), 1)


def cpu_threads(env: MutableMapping[str, str]) -> int:
    """This rank's share of the cores it may run on.

    Every rank of a CPU node otherwise starts one thread per core: with N ranks, N threads fight
    for each core, and OpenMP's spinning barriers make steps several times slower (2 ranks on 2
    cores: 2.1 s a step against 1.1 s with one thread each). DeepSpeed's launcher says how many
    ranks share the node in LOCAL_SIZE, torchrun and srun in LOCAL_WORLD_SIZE.
    """
    return max(1, len(os.sched_getaffinity(0)) // ranks_per_node(env))


# DeepSpeed's CPU all-reduce maps one shared-memory segment per rank (/dev/shm, 66 MB each) when
# all ranks share a node, and never unlinks it: every run leaked its segments until /dev/shm, which
# is RAM, filled up. Once every rank has mapped its peers' segments (the barrier), the names are no
# longer needed; unlinking them now frees the memory when the processes exit, even on SIGKILL.
SHM_DIR = Path("/dev/shm")


def shm_segment(master_addr: str, master_port: str, rank_: int) -> Path:
    """The file DeepSpeed's shm comm op creates for `rank_` of the process group at master_addr:master_port."""
    return SHM_DIR / f"deepspeed_allreduce_buffer_{os.getuid()}_{master_addr}_{master_port}_{rank_}"


def _unlink_shm_segment() -> None:
    barrier()
    shm_segment(os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", ""), rank()).unlink(missing_ok=True)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce(tensor: torch.Tensor) -> None:
    """Sum `tensor` over the ranks, in place."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)


def any_true(flag: bool) -> bool:
    """True on every rank when `flag` is true on any rank (a collective: every rank must call it)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def comm_device() -> torch.device:
    """Where tensors for a collective live: the GPU for NCCL, the CPU for gloo."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


_GONE = re.compile(r"Connection (reset|closed) by peer|Broken pipe|Socket closed|ECONNRESET|EPIPE|"
                   r"remote process exited|NCCL communicator was aborted", re.IGNORECASE)
_TIMEOUT = re.compile(r"Timed out|timeout|Watchdog caught collective operation timeout", re.IGNORECASE)
_COMM = re.compile(r"gloo|nccl|c10d|ProcessGroup", re.IGNORECASE)


def comm_failure(exc: BaseException, timeout_minutes: float) -> str | None:
    """What a failed collective means for the user, or None when `exc` is no communication failure.

    gloo reports a dead peer or a timeout as a plain RuntimeError, NCCL as DistBackendError: the
    message is all there is to go on.
    """
    text = str(exc)
    if not (isinstance(exc, getattr(dist, "DistError", ())) or (isinstance(exc, RuntimeError) and _COMM.search(text))):
        return None
    detail = first_line(exc)
    # Without the C++ source location and gloo's advice after the first sentence.
    detail = re.sub(r"^\[[^\]]*\]\s*", "", detail).split(". ")[0][:160]
    if _GONE.search(text):
        return f"another rank is gone: its process died or its node went down ({detail})"
    if _TIMEOUT.search(text):
        limit = f" {timeout_minutes:g} min" if timeout_minutes == timeout_minutes else ""  # nan: not known here
        return (f"no answer from another rank within --dist_timeout{limit}: a rank hangs or its node is "
                f"unreachable ({detail})")
    return f"a collective with the other ranks failed ({detail})"


class StopFlag:
    """SIGTERM or SIGINT (preemption, a time limit, Ctrl-C) asks for a checkpoint and a clean exit.

    The first signal only sets a flag; the training loop checks it at step boundaries with a
    collective, so all ranks stop at the same step. A second signal exits at once: the commit
    protocol keeps the last committed checkpoint intact.
    """

    # Launchers pass a Ctrl-C on as SIGTERM right after the terminal's SIGINT: a repeat this
    # soon is the same request, not a second one.
    REPEAT_GRACE_S = 10.0

    def __init__(self) -> None:
        self.requested: str | None = None
        self.at = 0.0

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            if time.monotonic() - self.at > self.REPEAT_GRACE_S:
                os._exit(128 + signum)
            return
        self.requested, self.at = signal.Signals(signum).name, time.monotonic()

    def agreed(self) -> bool:
        return any_true(self.requested is not None)


def all_gather_object(obj: Any) -> list[Any]:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


# Long single-rank work (training a tokenizer, converting a checkpoint, an export) must not happen while
# the other ranks sit in a collective: a collective fails after --dist_timeout, and the job would report
# a healthy rank as hung. The waiting ranks poll the process group's key-value store instead: no
# collective, no timeout. A rank that fails says so in the store (`announce_failure`), rank 0's death takes
# the store with it, and a node killed outright stops its heartbeat: no wait outlives the job.
POLL_S = 0.2


def _store() -> Any:
    from torch.distributed import distributed_c10d

    return distributed_c10d._get_default_store()


def _key(name: str) -> str:
    # torchrun restarts a worker group against the same store: keys of an earlier attempt must not count.
    return f"dslm/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{name}"


HEARTBEAT_S = 10.0  # each node's first rank counts up a key this often while the job lives
STALE_S = 120.0  # a node whose count has not moved for this long is gone (killed, its machine down)
LEADERS: list[int] = []  # global ranks that are their node's first: they build, and they beat


def _start_heartbeat() -> None:
    """A node killed outright (the OOM killer, a machine lost) says nothing: the others, waiting without a
    timeout (below), see its beat stop."""
    if dist.get_world_size() == 1:
        return
    LEADERS[:] = [r for r, first in enumerate(all_gather_object(local_rank() == 0)) if first]
    if local_rank() != 0:
        return
    import threading

    store, key = _store(), _key(f"alive/{rank()}")

    def beat() -> None:
        while True:
            try:
                store.add(key, 1)
            except Exception:  # the store (rank 0's process) is gone: the job is ending
                return
            time.sleep(HEARTBEAT_S)

    threading.Thread(target=beat, name="dslm-heartbeat", daemon=True).start()


def announce_failure(message: str) -> None:
    """Tell ranks that wait without a timeout that this rank failed (best effort: the store may be gone)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        with contextlib.suppress(Exception):  # the job is failing already: nothing more to tell
            _store().set(_key("failed"), f"rank {rank()} failed: {message}"[:500])


class _Waiter:
    """What a rank waiting without a timeout checks while it polls: another rank's failure, a node's stopped
    heartbeat, and, each --dist_timeout, a line saying what it waits for."""

    def __init__(self, what: str) -> None:
        self.what, self.store = what, _store()
        self.started = self.said = self.checked = time.monotonic()
        self.beats: dict[int, tuple[int, float]] = {}

    def poll(self) -> None:
        now = time.monotonic()
        if self.store.check([_key("failed")]):
            raise PeerLost(f"{self.store.get(_key('failed')).decode()}; this rank was waiting for {self.what}")
        if now - self.checked >= HEARTBEAT_S:
            self.checked = now
            for leader in LEADERS:
                key = _key(f"alive/{leader}")
                count = int(self.store.get(key)) if self.store.check([key]) else 0
                last, since = self.beats.get(leader, (-1, now))
                if count != last:
                    self.beats[leader] = (count, now)
                elif now - since > STALE_S:
                    raise PeerLost(f"rank {leader}'s node stopped answering ({now - since:.0f} s without a heartbeat) "
                                   f"while this rank waited for {self.what}")
        if now - self.said >= TIMEOUT_MINUTES[0] * 60:
            print(f"dslm: rank {rank()}: still waiting for {self.what} ({(now - self.started) / 60:.0f} min so far)",
                  flush=True)
            self.said = now
        time.sleep(POLL_S)


def from_rank0(name: str, produce: Callable[[], Any], what: str) -> Any:
    """`produce()` on rank 0; every rank gets its (picklable) result, or rank 0's ConfigError, without
    waiting in a collective (see above)."""
    import pickle

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return produce()
    store, key = _store(), _key(name)
    if rank() == 0:
        try:
            result: Any = ("ok", produce())
        except ConfigError as exc:
            result = ("error", str(exc))
        store.set(key, pickle.dumps(result))
    else:
        waiter = _Waiter(what)
        while not store.check([key]):
            waiter.poll()
        result = pickle.loads(store.get(key))
    if result[0] == "error":
        raise ConfigError(result[1])
    return result[1]


def wait_all(name: str, what: str) -> None:
    """A barrier without a timeout, for after uneven work (a cache built on one node, an export on rank 0)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    store, key = _store(), _key(f"arrived/{name}")
    store.add(key, 1)
    waiter = _Waiter(what)
    while store.add(key, 0) < dist.get_world_size():
        waiter.poll()


def build_once_per_node(target: Path, build: Callable[[Path], None], what: str) -> None:
    """Build `target` on local rank 0 while the node's other ranks wait on the file system.

    Waiting by polling rather than in a collective keeps a long tokenization from tripping the
    process group's timeout. The build writes into a temporary directory that is renamed into
    place, so a reader never sees half a build and nodes sharing a file system cannot collide.
    """
    failed = target.with_name(target.name + ".failed")
    if local_rank() == 0:
        if not target.exists():
            failed.unlink(missing_ok=True)
            try:
                atomic.write_directory(target, build)
            except BaseException as exc:
                failed.parent.mkdir(parents=True, exist_ok=True)
                failed.write_text(json.dumps({"type": type(exc).__name__, "message": str(exc)}))
                raise
    else:
        started = time.time() - 1
        while not target.exists():
            if failed.exists() and failed.stat().st_mtime >= started:
                error = json.loads(failed.read_text())
                if error["type"] == "ConfigError":  # the input is bad: rank 0 has said so already
                    raise ConfigError(error["message"])
                raise RuntimeError(f"local rank 0 failed to build the {what}: {error['message']}")
            time.sleep(0.5)
    wait_all(f"built/{target.name}", f"the other nodes to build the {what}")
