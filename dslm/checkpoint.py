"""Sharded DeepSpeed checkpoints that count only once committed: the state format, save, rotation,
finding the one to resume from, and resuming.

A checkpoint is `OUTPUT_DIR/checkpoints/step-NNNNNNNN/`: DeepSpeed's shards from every rank,
each rank's RNG state, `dslm_state.json` (the `Progress`, the run's facts and fingerprint, the
config), the model config and tokenizer. Once every rank has written (barrier), rank 0 writes a
manifest of every file with its size and SHA-256, then the commit marker, then moves the `latest`
pointer, each atomically. A kill at any moment leaves the previous checkpoint or the new one as
latest, never a partial one.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import random
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from dslm import atomic, dist, nonfinite
from dslm.errors import CheckpointError, ConfigError, NonFinite, first_line
from dslm.manifest import COMMIT, MANIFEST, entries_together, size_of, verify, verify_together
from dslm.progress import Progress

TAG = re.compile(r"^step-(\d{8})$")
STATE, STARTED, POINTER = "dslm_state.json", "dslm_started.json", "latest"
__all__ = ["COMMIT", "MANIFEST", "verify"]  # the manifest's names, used with the checkpoint's


def tag(step: int) -> str:
    return f"step-{step:08d}"  # zero-padded so names sort by step


def step_of(path: Path) -> int:
    return int(TAG.match(path.name).group(1))


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


def read_state(tag_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((tag_dir / STATE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


@dataclass
class Found:
    """A committed, verified checkpoint to resume from."""

    path: Path
    state: dict[str, Any]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """DeepSpeed narrates every file it reads or writes on stdout; dslm reports saves itself."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield
    sys.stdout.flush()


class Checkpoints:
    """The checkpoints of one run (`fingerprint`) in OUTPUT_DIR/checkpoints: which are ours, which to resume."""

    def __init__(self, output_dir: Path, fingerprint: str, warn: Callable[[str], None] = print) -> None:
        self.root = output_dir / "checkpoints"
        self.fingerprint = fingerprint
        self.warn = warn

    def tags(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted((p for p in self.root.iterdir() if p.is_dir() and TAG.match(p.name)), key=step_of,
                      reverse=True)

    def ours(self, tag_dir: Path) -> bool:
        for marker in (STATE, STARTED):
            try:
                return json.loads((tag_dir / marker).read_text())["run_fingerprint"] == self.fingerprint
            except (OSError, json.JSONDecodeError, KeyError):
                continue
        return False

    def foreign(self) -> list[Path]:
        """Checkpoint directories that are not this run's: a save would collide with them."""
        return [t for t in self.tags() if not self.ours(t)]

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
                if not self.ours(tag_dir):
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

    def find(self, resume: str, overwrite: bool) -> Found | None:
        """The checkpoint to resume from (`--resume_from_checkpoint`), the same on every rank."""
        if resume == "none" or (resume == "auto" and overwrite):
            return None
        if resume == "auto":
            return self.latest()
        path = Path(resume)
        problem = verify_together(path)
        if problem:
            raise ConfigError(f"--resume_from_checkpoint {path}: {problem}")
        return Found(path, read_state(path))

    def kept(self) -> str:
        """Which committed checkpoint a failed run leaves as latest (read from the pointer: no collective)."""
        pointer = self.root / POINTER
        if pointer.exists():
            return f"{self.root / pointer.read_text().strip()} stays the latest checkpoint"
        return "no checkpoint was committed before it"

    def last_committed(self, besides: Path | None = None) -> Path | None:
        return next((t for t in self.tags() if (t / COMMIT).exists() and t != besides), None)


def load_dir(found: Found, ds: dict[str, Any], world: int, say: Callable[[str], None]) -> Path:
    """Where DeepSpeed loads `found` from, after checking it suits this run's ZeRO stage and world size.

    ZeRO shards are cut for the world size that saved them: on another world size they are
    converted to DeepSpeed's universal format (once, kept beside them) and `ds` is told to load it.
    """
    stage = int(ds.get("zero_optimization", {}).get("stage", 0))
    old_stage = found.state["zero_stage"]
    if old_stage != stage:
        raise ConfigError(f"{found.path} was saved with ZeRO-{old_stage} and this run uses ZeRO-{stage}: resume "
                          f"with a ZeRO-{old_stage} config, or start over (--resume_from_checkpoint none)")
    if found.state["world_size"] == world or stage == 0:
        return found.path.parent
    say(f"resuming a {found.state['world_size']}-rank checkpoint on {world} ranks: converting {found.path.name} to a "
        f"universal checkpoint")
    dist.from_rank0(f"universal/{found.path.name}", lambda: str(to_universal(found.path)),
                    f"rank 0 to convert {found.path.name} to a universal checkpoint")
    ds["checkpoint"] = {**ds.get("checkpoint", {}), "load_universal": True}
    return found.path / "universal"


def resume(engine: Any, found: Found, directory: Path, world: int) -> Progress:
    """Load the engine's state (weights, optimizer, scheduler) and this rank's RNG; return where training was."""
    with quiet():
        loaded, _ = engine.load_checkpoint(str(directory), tag=found.path.name)
    if loaded is None:
        raise CheckpointError(f"DeepSpeed could not load {found.path}: check that it is complete")
    if found.state["world_size"] == world:  # the same ranks continue their own random streams exactly
        set_rng_state(torch.load(found.path / f"rng_state_{dist.rank():05d}.pt", weights_only=True))
    return Progress.from_dict(found.state)


def to_universal(tag_dir: Path) -> Path:
    """Convert a ZeRO checkpoint for a different world size with DeepSpeed's own converter."""
    from deepspeed.checkpoint import ds_to_universal

    out_root = tag_dir / "universal"
    target = out_root / tag_dir.name
    if not (out_root / "done").exists():
        shutil.rmtree(out_root, ignore_errors=True)
        args = argparse.Namespace(input_folder=str(tag_dir), output_folder=str(target), num_extract_workers=1,
                                  num_merge_workers=1, keep_temp_folder=False, strict=True,
                                  inject_missing_state=True)
        with quiet():
            ds_to_universal.main(args)
        (out_root / "done").write_text("")
    return out_root


class Checkpointer:
    """Saves this run's checkpoints: when (`should_save`), what (the state format), commit, rotation."""

    def __init__(self, checkpoints: Checkpoints, facts: dict[str, Any], *, save_steps: int, limit: int | None,
                 milestone: int | None) -> None:
        self.dir, self.root = checkpoints, checkpoints.root
        self.facts = facts  # what every state records beside the progress: world size, ZeRO stage, model, data
        self.save_steps, self.limit, self.milestone = save_steps, limit, milestone
        self.last_size: int | None = None
        self.last_seconds: float | None = None

    def should_save(self, step: int, total: int) -> bool:
        """Every --save_steps; the last step is saved by the end of the run, not here."""
        return bool(self.save_steps) and step % self.save_steps == 0 and step != total

    def figures(self) -> dict[str, float]:
        return {"checkpoint/save_seconds": self.last_seconds, "checkpoint/size_mb": (self.last_size or 0) / 2**20}

    def save(self, engine: Any, module: torch.nn.Module, tokenizer: PreTrainedTokenizerBase,
             progress: Progress, extra: dict[str, Any] | None = None) -> Path:
        """`extra`: more of the state rank 0 writes (a stream's reader positions)."""
        step = progress.step
        if not nonfinite.weights_finite(module):
            raise NonFinite(f"the weights hold inf/NaN at step {step}: checkpoint {tag(step)} is not written "
                            f"({self.dir.kept()}); check --learning_rate, --adam_epsilon and the data")
        started = time.perf_counter()
        tag_dir = self._start(step)
        failure: Exception | None = None
        try:
            # save_latest=False: DeepSpeed would move its `latest` before every rank has finished.
            with quiet():
                engine.save_checkpoint(str(self.root), tag=tag(step), client_state={}, save_latest=False)
            torch.save(rng_state(), tag_dir / f"rng_state_{dist.rank():05d}.pt")
            if dist.is_main():
                state = {**progress.to_dict(), **self.facts, **(extra or {}), "run_fingerprint": self.dir.fingerprint}
                (tag_dir / STATE).write_text(json.dumps(state, indent=2))
                module.config.save_pretrained(str(tag_dir))
                tokenizer.save_pretrained(str(tag_dir))
        except Exception as exc:  # torch.save reports a full disk as RuntimeError, the rest as OSError
            failure = exc
        self._commit(tag_dir, failure)
        self.last_seconds = time.perf_counter() - started
        return tag_dir

    def _start(self, step: int) -> Path:
        """Rank 0 decides and tells the others: ranks looking at the directory while rank 0 prepares it
        could disagree, and one rank raising alone would hang the rest."""
        tag_dir = self.root / tag(step)
        problem = None
        if dist.is_main():
            if tag_dir.exists() and not self.dir.ours(tag_dir):
                problem = (f"{tag_dir} belongs to another run: dslm will not overwrite it; move it away or use "
                           f"another --output_dir")
            else:
                if tag_dir.exists():  # this run's leftover of this step (killed before the commit, or replaced)
                    atomic.remove(tag_dir)
                # with its marker from the start: a kill in between would leave a directory of no run
                marker = json.dumps({"run_fingerprint": self.dir.fingerprint})
                self.root.mkdir(parents=True, exist_ok=True)
                atomic.write_directory(tag_dir, lambda tmp: (tmp / STARTED).write_text(marker))
                problem = self._space_problem(tag_dir)
                if problem:
                    atomic.remove(tag_dir)
        problem = dist.broadcast(problem)
        if problem:
            raise CheckpointError(problem)
        return tag_dir

    def _commit(self, tag_dir: Path, failure: Exception | None) -> None:
        main = dist.is_main()
        # Every rank's shards are on disk, or some rank failed: all ranks learn which.
        if dist.any_true(failure is not None):
            if main:
                atomic.remove(tag_dir)
            raise self._failed(tag_dir, failure)
        files, problem = entries_together(tag_dir)
        if problem:
            if main:
                atomic.remove(tag_dir)
            error = CheckpointError(f"saving checkpoint {tag_dir.name} failed {problem}; free space or check the "
                                    f"file system, then run the same command to resume")
            error.same_on_every_rank = True
            raise error
        if main:
            atomic.write_file(tag_dir / MANIFEST, json.dumps({"files": files}, indent=1))
            atomic.write_file(tag_dir / COMMIT, json.dumps({"step": step_of(tag_dir)}))
            atomic.write_file(self.root / POINTER, tag_dir.name)
            self.last_size = sum(size for size, _ in files.values())
            self.rotate(step_of(tag_dir))
        dist.wait_all(f"committed/{tag_dir.name}", f"rank 0 to commit {tag_dir.name} and rotate checkpoints")

    def _space_problem(self, tag_dir: Path) -> str | None:
        if self.last_size is None:
            previous = self.dir.last_committed(besides=tag_dir)
            self.last_size = size_of(previous) if previous else None
        free = shutil.disk_usage(tag_dir).free
        if self.last_size and free < self.last_size * 1.05:
            return (f"not enough disk space for checkpoint {tag_dir.name}: {free / 2**20:.0f} MiB free "
                    f"in {self.root}, the last one took {self.last_size / 2**20:.0f} MiB; free space or "
                    f"lower --save_total_limit, then run the same command to resume")
        return None

    def _failed(self, tag_dir: Path, exc: Exception | None) -> CheckpointError:
        previous = self.dir.last_committed(besides=tag_dir)
        kept = f"the last committed checkpoint ({previous.name}) is intact" if previous else \
            "no earlier checkpoint exists"
        if exc is None:  # the rank that failed says why; of the others, rank 0 says that it happened
            error = CheckpointError(f"saving checkpoint {tag_dir.name} failed on another rank; {kept}")
            error.same_on_every_rank = True
            return error
        full = getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in str(exc)
        reason = f"on rank {dist.rank()}: " + ("no space left on device" if full else first_line(exc))
        return CheckpointError(f"saving checkpoint {tag_dir.name} failed {reason}; {kept}: "
                               f"free space or lower --save_total_limit, then run the same command to resume")

    def rotate(self, current: int) -> None:
        """After committing step `current`: keep the newest `limit` committed checkpoints of this run
        plus milestones, and drop this run's checkpoints past `current` (a timeline abandoned by
        resuming from an older one) and its interrupted saves. Never touches anything else."""
        ours = [t for t in self.dir.tags() if self.dir.ours(t)]
        committed = [t for t in ours if (t / COMMIT).exists() and step_of(t) <= current]
        keep = set(committed[: self.limit] if self.limit else committed)
        if self.milestone:
            keep |= {t for t in committed if step_of(t) % self.milestone == 0}
        for t in ours:
            if t not in keep and step_of(t) != current:
                atomic.remove(t)
        for trash in self.root.glob(".trash-step-*"):  # left by a kill between a rename and its delete
            shutil.rmtree(trash, ignore_errors=True)


def estimate_line(root: Path, n_params: int, mixed_precision: bool, limit: int | None) -> str:
    """The size of one checkpoint and the bound on their disk use, for the start-up lines."""
    # fp32 weights + Adam's two moments (+ fp32 master weights under mixed precision)
    size = n_params * (4 + 8 + (4 if mixed_precision else 0))
    # A new checkpoint is written before rotation removes the oldest: K + 1 exist for a moment.
    bound = (f"at most {limit} + 1 while saving = {(limit + 1) * size / 2**20:.1f} MiB (plus milestones, "
             f"--save_total_limit {limit})" if limit else "--save_total_limit 0: every one kept, unbounded")
    return f"checkpoints: ~{size / 2**20:.1f} MiB each, {bound}, in {root}"
