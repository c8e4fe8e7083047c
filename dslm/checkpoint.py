"""Sharded DeepSpeed checkpoints that count only once committed; rotation, resume and export.

A checkpoint is `OUTPUT_DIR/checkpoints/step-NNNNNNNN/`: DeepSpeed's shards from every rank,
each rank's RNG state, `dslm_state.json` (step, data position, run fingerprint, config), the
model config and tokenizer. Once every rank has written (barrier), rank 0 writes a manifest of
every file with its size and SHA-256, then the commit marker, then moves the `latest` pointer,
each atomically (temp file, fsync, rename). A kill at any moment leaves the previous checkpoint
or the new one as latest, never a partial one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import re
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from dslm import dist, objectives
from dslm.config import DslmError

TAG = re.compile(r"^step-(\d{8})$")
MANIFEST, COMMIT, STATE, STARTED, POINTER = "dslm_manifest.json", "dslm_commit.json", "dslm_state.json", \
    "dslm_started.json", "latest"


class CheckpointError(DslmError):
    """A checkpoint cannot be written or read; printed as one line."""


def tag(step: int) -> str:
    return f"step-{step:08d}"  # zero-padded so names sort by step


def step_of(path: Path) -> int:
    return int(TAG.match(path.name).group(1))


def write_atomically(path: Path, text: str) -> None:
    """Temp file, fsync, rename, fsync the directory: the file is either old or whole."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:  # fsync works on any descriptor
        os.fsync(f.fileno())


def _shares(files: list[Path], world: int) -> list[list[Path]]:
    """Split the files over the ranks by size, largest first onto the least loaded rank: every rank
    computes the same split from the same listing."""
    shares: list[list[Path]] = [[] for _ in range(world)]
    loads = [0] * world
    for path in sorted(files, key=lambda p: (-p.stat().st_size, p.name)):
        least = loads.index(min(loads))
        shares[least].append(path)
        loads[least] += path.stat().st_size
    return shares


def _manifest_entries(tag_dir: Path) -> tuple[dict[str, list], str | None]:
    """[size, sha256] of every file of the checkpoint, each rank hashing (and syncing) its share:
    reading a large checkpoint back through one rank would take longer than writing it. A rank that
    cannot read or sync its share says why instead (a collective: no rank may leave early)."""
    entries: dict[str, list] = {}
    error = None
    try:
        mine = _shares(_files(tag_dir), dist.world_size())[dist.rank()]
        # The disk flushes the share while this rank hashes it (from the page cache): the two overlap.
        with ThreadPoolExecutor(max_workers=1) as pool:
            synced = pool.submit(lambda: [_fsync(p) for p in mine])
            entries = {str(p.relative_to(tag_dir)): [p.stat().st_size, _sha256(p)] for p in mine}
            synced.result()
    except OSError as exc:
        error = f"on rank {dist.rank()}: {exc}"
    merged: dict[str, list] = {}
    errors = []
    for part, problem in dist.all_gather_object((entries, error)):
        merged.update(part)
        errors += [problem] if problem else []
    return dict(sorted(merged.items())), errors[0] if errors else None


def _files(tag_dir: Path) -> list[Path]:
    skip = {MANIFEST, COMMIT}
    return sorted(p for p in tag_dir.rglob("*")
                  if p.is_file() and p.name not in skip and "universal" not in p.relative_to(tag_dir).parts)


def size_of(tag_dir: Path) -> int:
    return sum(p.stat().st_size for p in _files(tag_dir))


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch generators of this rank (DeepSpeed saves none of them)."""
    np_state = np.random.get_state()
    state = {"python": list(random.getstate()[1]), "python_version": random.getstate()[0],
             "python_gauss": random.getstate()[2],
             "numpy": torch.from_numpy(np_state[1].astype(np.int64)), "numpy_pos": int(np_state[2]),
             "numpy_gauss": [int(np_state[3]), float(np_state[4])], "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_gauss"][0], state["numpy_gauss"][1]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


@dataclass
class Found:
    path: Path
    state: dict[str, Any]


def verify(tag_dir: Path, rank: int = 0, world: int = 1) -> str | None:
    """None if the checkpoint is committed and its files match the manifest, else what is wrong.

    Every file's presence and size are checked; the checksums of this rank's share only (the same
    split as at save time), so `world` ranks together read the checkpoint once.
    """
    if not (tag_dir / COMMIT).exists():
        return "no commit marker (the save did not finish)"
    try:
        manifest = json.loads((tag_dir / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return "unreadable manifest"
    paths = []
    for rel, (size, _) in manifest["files"].items():
        path = tag_dir / rel
        if not path.is_file():
            return f"missing {rel}"
        if path.stat().st_size != size:
            return f"{rel} has {path.stat().st_size} bytes, the manifest says {size}"
        paths.append(path)
    for path in _shares(paths, world)[rank]:
        if _sha256(path) != manifest["files"][str(path.relative_to(tag_dir))][1]:
            return f"{path.relative_to(tag_dir)} does not match its checksum"
    return None


def verify_together(tag_dir: Path) -> str | None:
    """`verify` by every rank at once, each hashing its share; the same answer on every rank (a collective)."""
    try:
        problem = verify(tag_dir, dist.rank(), dist.world_size())
    except OSError as exc:
        problem = f"unreadable ({exc})"
    return next((p for p in dist.all_gather_object(problem) if p), None)


def read_state(tag_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((tag_dir / STATE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


class Checkpointer:
    """Save, commit, rotate and find checkpoints of one run (`fingerprint`) in OUTPUT_DIR/checkpoints."""

    def __init__(self, output_dir: Path, fingerprint: str, save_total_limit: int | None, milestone_steps: int | None,
                 warn: Any = print) -> None:
        self.root = output_dir / "checkpoints"
        self.fingerprint = fingerprint
        self.limit = save_total_limit
        self.milestone = milestone_steps
        self.warn = warn
        self.last_size: int | None = None

    def tags(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted((p for p in self.root.iterdir() if p.is_dir() and TAG.match(p.name)), key=step_of,
                      reverse=True)

    def _ours(self, tag_dir: Path) -> bool:
        for marker in (STATE, STARTED):
            try:
                return json.loads((tag_dir / marker).read_text())["run_fingerprint"] == self.fingerprint
            except (OSError, json.JSONDecodeError, KeyError):
                continue
        return False

    def foreign(self) -> list[Path]:
        """Checkpoint directories that are not this run's: a save would collide with them."""
        return [t for t in self.tags() if not self._ours(t)]

    def latest(self) -> Found | None:
        """The newest committed, intact checkpoint of this run; others are named and skipped.

        A collective: rank 0 lists the candidates (one view of a shared file system), then all ranks
        verify each in turn, each reading its share of the files.
        """
        candidates = None
        if dist.is_main():
            candidates = []
            for tag_dir in self.tags():
                if not (tag_dir / COMMIT).exists():
                    continue  # an interrupted save: silently not a checkpoint
                if not self._ours(tag_dir):
                    self.warn(f"skipping checkpoint {tag_dir}: it belongs to another run (different model, data or "
                              f"seed)")
                    continue
                candidates.append(str(tag_dir))
        for name in dist.broadcast(candidates):
            problem = verify_together(Path(name))
            if problem:
                self.warn(f"skipping checkpoint {name}: {problem}")
                continue
            return Found(Path(name), read_state(Path(name)))
        return None

    def save(self, engine: Any, step: int, state: dict[str, Any], model_config: PretrainedConfig,
             tokenizer: PreTrainedTokenizerBase) -> Path:
        tag_dir = self.root / tag(step)
        main = dist.is_main()
        # Rank 0 decides and tells the others: ranks looking at the directory while rank 0
        # prepares it could disagree, and one rank raising alone would hang the rest.
        problem = None
        if main:
            if tag_dir.exists() and not self._ours(tag_dir):
                problem = (f"{tag_dir} belongs to another run: dslm will not overwrite it; move it away or use "
                           f"another --output_dir")
            else:
                if tag_dir.exists():  # this run's leftover of this step (killed before the commit, or replaced)
                    remove(tag_dir)
                tag_dir.mkdir(parents=True)
                write_atomically(tag_dir / STARTED, json.dumps({"run_fingerprint": self.fingerprint}))
                problem = self._space_problem(tag_dir)
                if problem:
                    remove(tag_dir)
        problem = dist.broadcast(problem)
        if problem:
            raise CheckpointError(problem)
        failure: Exception | None = None
        try:
            # save_latest=False: DeepSpeed would move its `latest` before every rank has finished.
            with _quiet():
                engine.save_checkpoint(str(self.root), tag=tag(step), client_state={}, save_latest=False)
            torch.save(rng_state(), tag_dir / f"rng_state_{dist.rank():05d}.pt")
            if main:
                (tag_dir / STATE).write_text(json.dumps({**state, "run_fingerprint": self.fingerprint}, indent=2))
                model_config.save_pretrained(str(tag_dir))
                tokenizer.save_pretrained(str(tag_dir))
        except Exception as exc:  # torch.save reports a full disk as RuntimeError, the rest as OSError
            failure = exc
        if os.environ.get("DSLM_TEST_KILL_AT_SAVE") == f"{step}:{dist.rank()}":
            os.kill(os.getpid(), 9)  # fault injection for the tests: die between the shards and the commit
        # Every rank's shards are on disk, or some rank failed: all ranks learn which.
        if dist.any_true(failure is not None):
            if main:
                remove(tag_dir)
            raise self._failed(tag_dir, failure)
        files, problem = _manifest_entries(tag_dir)
        if problem:
            if main:
                remove(tag_dir)
            error = CheckpointError(f"saving checkpoint {tag_dir.name} failed {problem}; free space or check the "
                                    f"file system, then run the same command to resume")
            error.same_on_every_rank = True
            raise error
        if main:
            write_atomically(tag_dir / MANIFEST, json.dumps({"files": files}, indent=1))
            write_atomically(tag_dir / COMMIT, json.dumps({"step": step}))
            write_atomically(self.root / POINTER, tag(step))
            self.last_size = sum(size for size, _ in files.values())
            self.rotate(step)
        dist.barrier()
        return tag_dir

    def _space_problem(self, tag_dir: Path) -> str | None:
        if self.last_size is None:
            previous = next((t for t in self.tags() if (t / COMMIT).exists() and t != tag_dir), None)
            self.last_size = size_of(previous) if previous else None
        free = shutil.disk_usage(tag_dir).free
        if self.last_size and free < self.last_size * 1.05:
            return (f"not enough disk space for checkpoint {tag_dir.name}: {free / 2**20:.0f} MiB free "
                                  f"in {self.root}, the last one took {self.last_size / 2**20:.0f} MiB; free space or "
                    f"lower --save_total_limit, then run the same command to resume")
        return None

    def _failed(self, tag_dir: Path, exc: Exception | None) -> CheckpointError:
        previous = next((t.name for t in self.tags() if (t / COMMIT).exists() and t != tag_dir), None)
        kept = f"the last committed checkpoint ({previous}) is intact" if previous else "no earlier checkpoint exists"
        if exc is None:  # the rank that failed says why; of the others, rank 0 says that it happened
            error = CheckpointError(f"saving checkpoint {tag_dir.name} failed on another rank; {kept}")
            error.same_on_every_rank = True
            return error
        else:
            full = getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in str(exc)
            reason = f"on rank {dist.rank()}: " + ("no space left on device" if full else str(exc).splitlines()[0])
        return CheckpointError(f"saving checkpoint {tag_dir.name} failed {reason}; {kept}: "
                               f"free space or lower --save_total_limit, then run the same command to resume")

    def rotate(self, current: int) -> None:
        """After committing step `current`: keep the newest `limit` committed checkpoints of this run
        plus milestones, and drop this run's checkpoints past `current` (a timeline abandoned by
        resuming from an older one) and its interrupted saves. Never touches anything else."""
        ours = [t for t in self.tags() if self._ours(t)]
        committed = [t for t in ours if (t / COMMIT).exists() and step_of(t) <= current]
        keep = set(committed[: self.limit] if self.limit else committed)
        if self.milestone:
            keep |= {t for t in committed if step_of(t) % self.milestone == 0}
        for t in ours:
            if t not in keep and step_of(t) != current:
                remove(t)

    def estimate_line(self, n_params: int, mixed_precision: bool, limit: int | None) -> str:
        # fp32 weights + Adam's two moments (+ fp32 master weights under mixed precision)
        size = n_params * (4 + 8 + (4 if mixed_precision else 0))
        if self.last_size:
            size = self.last_size
        # A new checkpoint is written before rotation removes the oldest: K + 1 exist for a moment.
        bound = (f"at most {limit} + 1 while saving = {(limit + 1) * size / 2**20:.1f} MiB (plus milestones)"
                 if limit else "no --save_total_limit: unbounded")
        return f"checkpoints: ~{size / 2**20:.1f} MiB each, {bound}, in {self.root}"


def remove(path: Path) -> None:
    """Rename, then delete: a kill midway leaves a hidden directory, not a half checkpoint."""
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
    path.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


def to_universal(tag_dir: Path) -> Path:
    """Convert a ZeRO checkpoint for a different world size with DeepSpeed's own converter."""
    import argparse

    from deepspeed.checkpoint import ds_to_universal

    out_root = tag_dir / "universal"
    target = out_root / tag_dir.name
    if not (out_root / "done").exists():
        shutil.rmtree(out_root, ignore_errors=True)
        args = argparse.Namespace(input_folder=str(tag_dir), output_folder=str(target), num_extract_workers=1,
                                  num_merge_workers=1, keep_temp_folder=False, strict=True,
                                  inject_missing_state=True)
        with _quiet():
            ds_to_universal.main(args)
        (out_root / "done").write_text("")
    return out_root


@contextlib.contextmanager
def _quiet():
    """DeepSpeed narrates every file it reads or writes on stdout; dslm reports saves itself."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield
    sys.stdout.flush()


def consolidated_state_dict(checkpoint_dir: Path, zero_stage: int) -> dict[str, torch.Tensor]:
    """Full fp32 weights from a checkpoint's shards, by DeepSpeed's own consolidation (CPU)."""
    if zero_stage == 0:
        # Stage 0 keeps whole weights in the model-states file, which DeepSpeed pickles.
        states = torch.load(checkpoint_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
        return {k: v.float() if v.is_floating_point() else v for k, v in states["module"].items()}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    # It narrates every shard on stdout and draws bars on stderr.
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir.parent), tag=checkpoint_dir.name)


def export(checkpoint_dir: Path, out: Path, check: bool = True, overwrite: bool = False) -> None:
    """Any committed checkpoint (any ZeRO stage) -> a directory `from_pretrained` loads."""
    from transformers import AutoConfig, AutoTokenizer

    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CheckpointError(f"{out} exists and is not empty: give a new directory for the export")
    problem = verify(checkpoint_dir) if check else None
    if problem:
        raise CheckpointError(f"cannot export {checkpoint_dir}: {problem}")
    state = read_state(checkpoint_dir)
    model_config = AutoConfig.from_pretrained(str(checkpoint_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint_dir))
    weights = consolidated_state_dict(checkpoint_dir, state["zero_stage"])
    model = objectives.auto_class(state["objective"]).from_config(model_config)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not _is_tied(model, k)]
    if missing or unexpected:
        raise CheckpointError(f"{checkpoint_dir} does not match its model config: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    if out.exists():
        remove(out)
    tmp.rename(out)


def _is_tied(model: torch.nn.Module, key: str) -> bool:
    """A key missing from the shards is fine when its tensor is shared with one that is present."""
    params = dict(model.named_parameters(remove_duplicate=False))
    target = params.get(key)
    return target is not None and any(p is target for k, p in params.items() if k != key)
