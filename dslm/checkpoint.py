"""Sharded DeepSpeed checkpoints and their export to a Hugging Face model directory."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from dslm import objectives


def tag(step: int) -> str:
    return f"step-{step:08d}"  # zero-padded so names sort by step


def save(engine: Any, output_dir: Path, step: int, client_state: dict[str, Any]) -> Path:
    """Every rank writes its own shards (ZeRO-3 model shards included) under checkpoints/<tag>."""
    root = output_dir / "checkpoints"
    engine.save_checkpoint(str(root), tag=tag(step), client_state=client_state)
    return root / tag(step)


def consolidated_state_dict(checkpoint_dir: Path, zero_stage: int) -> dict[str, torch.Tensor]:
    """Full fp32 weights from a checkpoint's shards, by DeepSpeed's own consolidation (rank 0, CPU)."""
    if zero_stage == 0:
        # Stage 0 keeps whole weights in the model-states file, which DeepSpeed pickles.
        states = torch.load(checkpoint_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
        return {k: v.float() if v.is_floating_point() else v for k, v in states["module"].items()}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    # It narrates every shard on stdout and draws bars on stderr; dslm reports the export itself.
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir.parent), tag=checkpoint_dir.name)


def export(state_dict: dict[str, torch.Tensor], model_config: PretrainedConfig, objective: str,
           tokenizer: PreTrainedTokenizerBase, out: Path) -> None:
    """Write a directory that `from_pretrained` loads: config, model.safetensors and the tokenizer."""
    model = objectives.auto_class(objective).from_config(model_config)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in missing if not _is_tied(model, k)]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))


def _is_tied(model: torch.nn.Module, key: str) -> bool:
    """A key missing from the shards is fine when its tensor is shared with one that is present."""
    params = dict(model.named_parameters(remove_duplicate=False))
    target = params.get(key)
    return target is not None and any(p is target for k, p in params.items() if k != key)
