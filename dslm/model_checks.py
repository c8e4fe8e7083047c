"""Checks of a model before any work: its directory, its config against its weights, its size."""

from __future__ import annotations

import copy
import json
import struct
from pathlib import Path
from typing import Any

import psutil
import torch
from transformers import PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

from dslm import objectives
from dslm.errors import ConfigError, first_line


def check_config_file(path: str, trust_remote_code: bool) -> None:
    """config.json exists, is JSON and names a model type this transformers knows: said plainly, before
    AutoConfig's longer messages."""
    file = Path(path) / "config.json"
    if not file.is_file():
        raise ConfigError(f"--model_name_or_path {path} has no config.json: give a model directory saved with "
                          f"save_pretrained (or by dslm: OUTPUT_DIR/final)")
    try:
        values = json.loads(file.read_text())
        model_type = values.get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{file} is not a readable JSON object ({first_line(exc)}): restore the model's "
                          f"config.json") from None
    remote = trust_remote_code and "auto_map" in values  # the model brings its own config class
    if model_type is not None and model_type not in CONFIG_MAPPING_NAMES and not remote:
        raise ConfigError(f"{file} has model_type {model_type!r}, which this transformers does not know: fix "
                          f"model_type, upgrade transformers, or pass --trust_remote_code if the model ships its code")



WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def check_weights(path: str, model_config: PretrainedConfig, objective: str) -> int | None:
    """A local model directory has weights, and its config.json describes their shapes; its parameter
    count (None for a hub id).

    transformers re-initializes a tensor whose shape differs from the config (or raises after
    loading everything); reading the safetensors headers finds the mismatch before any work.
    """
    root = Path(path)
    if not root.is_dir():
        return  # a hub id: transformers fetches and checks it
    if not any((root / name).is_file() for name in WEIGHT_FILES):
        if (root / "dslm_state.json").is_file():
            raise ConfigError(f"--model_name_or_path {path} is a dslm checkpoint (DeepSpeed shards): export it with "
                              f"`dslm export {path} OUT_DIR` and pass OUT_DIR, or resume it with "
                              f"--resume_from_checkpoint")
        raise ConfigError(f"--model_name_or_path {path} has a config.json but no weights ({WEIGHT_FILES[0]} or "
                          f"{WEIGHT_FILES[2]}): give a complete model directory, or start from scratch with "
                          f"--model_type {model_config.model_type}")
    try:
        meta = meta_model(model_config, objective)
    except Exception as exc:
        raise ConfigError(f"--model_name_or_path {path}: its config.json does not describe a buildable model "
                          f"({type(exc).__name__}: {first_line(exc)}): restore the model's own config.json") from None
    expected = {name: tuple(t.shape) for name, t in meta.state_dict().items()}
    for key, shape in safetensors_shapes(root).items():
        name = _model_key(key, expected, meta.base_model_prefix)
        if name is not None and expected[name] != shape:
            raise ConfigError(f"--model_name_or_path {path}: weight {key} has shape {list(shape)} but config.json "
                              f"makes it {list(expected[name])}: the config does not match the weights; restore the "
                              f"model's own config.json")
    return sum(p.numel() for p in meta.parameters())


def safetensors_shapes(root: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from the safetensors headers (a few KB each), sharded or not; {} without safetensors."""
    index = root / "model.safetensors.index.json"
    try:
        files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else (
            ["model.safetensors"] if (root / "model.safetensors").is_file() else [])
        shapes = {}
        for name in files:
            with open(root / name, "rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(min(length, 100 << 20)))
            shapes.update({k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"})
        return shapes
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise ConfigError(f"--model_name_or_path {root}: cannot read the weights' safetensors header "
                          f"({type(exc).__name__}: {first_line(exc)}): the files are damaged; download or copy the "
                          f"model again") from None


def _model_key(key: str, expected: dict[str, Any], prefix: str) -> str | None:
    """The model's name for a checkpoint tensor: saved with or without the base model's prefix, or with
    the old LayerNorm names gamma/beta."""
    for candidate in (key, key.replace(".gamma", ".weight").replace(".beta", ".bias")):
        for name in (candidate, f"{prefix}.{candidate}", candidate.removeprefix(f"{prefix}.")):
            if name in expected:
                return name
    return None



def vocab_too_small(source: str, n_tokens: int, rows: int) -> ConfigError:
    return ConfigError(f"the tokenizer {source} has {n_tokens} tokens but the model's embedding table has {rows} rows: "
                       f"pass --resize_token_embeddings to grow it (new rows start random), or use the model's own "
                       f"tokenizer")


def override_too_small(override: int, n_tokens: int) -> ConfigError:
    return ConfigError(f"--config_overrides vocab_size={override} is smaller than the tokenizer's {n_tokens} tokens: "
                       f"drop vocab_size (dslm sizes the table to the tokenizer) or raise it to {n_tokens}")



def check_loaded(path: str, model: torch.nn.Module, info: dict[str, Any]) -> None:
    """Weights that transformers loaded around a mismatch: refuse what it would silently re-initialize."""
    prefix = model.base_model_prefix
    body = sorted(k for k in info.get("missing_keys", ()) if k.startswith(f"{prefix}."))
    if body:
        raise ConfigError(f"--model_name_or_path {path}: the weights lack {len(body)} tensors that config.json "
                          f"describes (e.g. {body[0]}): the config does not match the weights; restore the model's own "
                          f"config.json")


def check_buildable(model_config: PretrainedConfig, objective: str) -> None:
    """Build the model on the meta device (no memory, no time) to refuse impossible configs early."""
    try:
        meta = meta_model(model_config, objective)
    except Exception as exc:  # any failure here comes from the config's values (e.g. a zero head count)
        raise ConfigError(f"cannot build a {model_config.model_type} model from this config "
                          f"({type(exc).__name__}: {first_line(exc)}): fix --config_overrides") from None
    empty = next(((name, p.shape) for name, p in meta.named_parameters() if p.numel() == 0), None)
    if empty:  # builds, then fails at the first forward pass (an index into an empty table)
        raise ConfigError(f"--config_overrides makes {empty[0]} empty (shape {list(empty[1])}): a size is 0; make it "
                          f"positive")
    return sum(p.numel() for p in meta.parameters())


def meta_model(model_config: PretrainedConfig, objective: str) -> torch.nn.Module:
    """The model with shapes but no memory: free to build, for checks."""
    with torch.device("meta"):
        return objectives.auto_class(objective).from_config(copy.deepcopy(model_config))


def check_memory(n_params: int, ranks_per_node: int, partitioned: bool) -> None:
    """Each rank of the node first holds the model in fp32 on the CPU, whole, or (ZeRO-3, built partitioned)
    its share: refuse a model the node's memory cannot hold that way."""
    copies = 1 if partitioned else ranks_per_node
    need, have = n_params * 4 * copies, psutil.virtual_memory().total
    if need <= have:
        return
    how = ("split over the node's ranks (ZeRO-3)" if partitioned else
           f"one copy on each of the node's {ranks_per_node} rank(s)")
    fix = "" if partitioned else ", or build it partitioned with a ZeRO-3 config (--deepspeed zero3)"
    raise ConfigError(f"the model has {n_params / 1e9:.1f}B parameters, {n_params * 4 / 2**30:.1f} GiB in fp32, "
                      f"{how}: {need / 2**30:.0f} GiB, more than this machine's {have / 2**30:.0f} GiB of memory: "
                      f"make it smaller with --config_overrides{fix}")
