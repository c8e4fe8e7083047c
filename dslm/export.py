"""A committed checkpoint (any ZeRO stage) -> a Hugging Face model directory `from_pretrained` loads."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from dslm import atomic, objectives
from dslm.checkpoint import read_state
from dslm.errors import CheckpointError
from dslm.manifest import verify

SCRATCH_PREFIX = ".export-"  # temporary exports in an output directory: one left by a kill goes at the next start


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

    def fill(tmp: Path) -> None:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))

    atomic.write_directory(out, fill, replace=True)


def _is_tied(model: torch.nn.Module, key: str) -> bool:
    """A key missing from the shards is fine when its tensor is shared with one that is present."""
    params = dict(model.named_parameters(remove_duplicate=False))
    target = params.get(key)
    return target is not None and any(p is target for k, p in params.items() if k != key)


@contextlib.contextmanager
def temporary(checkpoint_dir: Path) -> Iterator[Path]:
    """The checkpoint exported to a model directory that lives only inside the `with` (in the output directory:
    the checkpoints' file system, not a small /tmp)."""
    scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=checkpoint_dir.parent.parent))
    try:
        # Building the model to load the weights into initializes it from torch's generator: a training that
        # goes on afterwards must draw (dropout, masks) as it would have without this export.
        with torch.random.fork_rng(devices=[]):
            export(checkpoint_dir, scratch / "model", check=False)
        yield scratch / "model"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
