"""Read a DeepSpeed JSON config and resolve its "auto" values from the run's flags.

"auto" is a Hugging Face Trainer convention: DeepSpeed itself rejects it at the top level and
silently replaces it with its own defaults inside `zero_optimization`, so every "auto" must be
resolved here. A value set in the JSON that contradicts a flag the user gave is refused.
"""

from __future__ import annotations

import copy
import difflib
import json
from pathlib import Path
from typing import Any

from dslm.config import ConfigError, RunConfig

# Top-level sections DeepSpeed reads (deepspeed/runtime/config.py). Anything else is a typo that
# DeepSpeed would ignore with at most a warning.
KNOWN_KEYS = {
    "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "optimizer",
    "scheduler", "fp16", "bf16", "bfloat16", "amp", "gradient_clipping", "prescale_gradients",
    "gradient_predivide_factor", "sparse_gradients", "zero_optimization", "zero_allow_untested_optimizer",
    "zero_force_ds_cpu_optimizer", "steps_per_print", "wall_clock_breakdown", "dump_state", "memory_breakdown",
    "activation_checkpointing", "flops_profiler", "tensorboard", "wandb", "csv_monitor", "comet",
    "comms_logger", "autotuning", "aio", "checkpoint", "data_types", "elasticity", "pipeline",
    "data_efficiency", "curriculum_learning", "compression_training", "communication_data_type",
    "seq_parallel_communication_data_type", "disable_allgather", "sparse_attention", "eigenvalue",
    "progressive_layer_drop", "quantize_training", "dataloader_drop_last", "load_universal_checkpoint",
    "use_data_before_expert_parallelism", "graph_harvesting", "torch_autocast", "compile", "nebula",
    "hybrid_engine", "use_node_local_storage", "timers", "weight_quantization", "zenflow",
}
SCHEDULER_TYPES = {"WarmupLR", "WarmupDecayLR", "WarmupCosineLR", "OneCycle", "LRRangeTest"}
DEFAULT_DIR = Path(__file__).resolve().parent / "ds_configs"  # the repo's ds_configs/ links here


def locate(path: str) -> Path:
    """The config as given, else the one of that name shipped in the repo's ds_configs/."""
    p = Path(path)
    if p.is_file():
        return p
    shipped = DEFAULT_DIR / p.name
    if not shipped.suffix:
        shipped = shipped.with_suffix(".json")
    if shipped.is_file():
        return shipped
    names = ", ".join(sorted(q.name for q in DEFAULT_DIR.glob("*.json")))
    raise ConfigError(f"--deepspeed {path}: no such file; give a JSON file or one of {names}")


def load(path: str) -> dict[str, Any]:
    p = locate(path)
    try:
        ds = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--deepspeed {p} is not valid JSON ({exc}): fix the file") from None
    if not isinstance(ds, dict):
        raise ConfigError(f"--deepspeed {p} must hold a JSON object")
    for key in ds:
        if key not in KNOWN_KEYS:
            close = difflib.get_close_matches(key, KNOWN_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"--deepspeed {p}: unknown key {key!r}{hint}; DeepSpeed would ignore it")
    for key in ("zero_optimization", "optimizer", "scheduler", "bf16", "fp16"):
        if key in ds and not isinstance(ds[key], dict):
            raise ConfigError(f"--deepspeed {p}: {key} must be a JSON object, got {ds[key]!r}")
    zero = ds.get("zero_optimization", {})
    for key in ("offload_optimizer", "offload_param"):
        if key in zero and not isinstance(zero[key], dict):
            raise ConfigError(f"--deepspeed {p}: zero_optimization.{key} must be a JSON object, got {zero[key]!r}")
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"--deepspeed {p}: zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r}")
    _check_zero_keys(p, zero)
    return ds


def _check_zero_keys(path: Path, zero: dict[str, Any]) -> None:
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    known = set(DeepSpeedZeroConfig.model_fields)
    known |= {f.alias for f in DeepSpeedZeroConfig.model_fields.values() if f.alias}
    for key in zero:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"--deepspeed {path}: unknown zero_optimization key {key!r}{hint}")


def zero_stage(ds: dict[str, Any]) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))


def _set(ds: dict, dotted: str, value: Any, config: RunConfig, flag: str | None, source: str) -> None:
    """Fill `dotted` with `value` where it is "auto"; refuse an explicit value that contradicts a given flag."""
    *parents, leaf = dotted.split(".")
    node = ds
    for key in parents:
        if key not in node:
            return
        node = node[key]
    if leaf not in node:
        return
    current = node[leaf]
    if current == "auto":
        node[leaf] = value
    elif flag is not None and flag in config.given and current != value:
        raise ConfigError(f"{source} sets {dotted}={current!r} but --{flag} is {value!r}: "
                          f"change one, or set it to \"auto\" in the JSON")


def resolve(ds_in: dict[str, Any], config: RunConfig, *, world_size: int, total_steps: int,
            warmup_steps: int, hidden_size: int | None, on_cpu: bool, source: str) -> dict[str, Any]:
    """Return a copy of `ds_in` with every "auto" filled and values checked against the flags."""
    ds = copy.deepcopy(ds_in)
    t = config.train
    micro, gas = t.per_device_train_batch_size, t.gradient_accumulation_steps
    _set(ds, "train_micro_batch_size_per_gpu", micro, config, "per_device_train_batch_size", source)
    _set(ds, "gradient_accumulation_steps", gas, config, "gradient_accumulation_steps", source)
    _set(ds, "train_batch_size", micro * gas * world_size, config, None, source)
    ds.setdefault("train_micro_batch_size_per_gpu", micro)
    ds.setdefault("gradient_accumulation_steps", gas)
    ds.setdefault("train_batch_size", micro * gas * world_size)
    for key, want in (("train_micro_batch_size_per_gpu", micro), ("gradient_accumulation_steps", gas)):
        if ds[key] != want:
            raise ConfigError(f"{source} sets {key}={ds[key]} but dslm uses {want} from the flags: "
                              f"set it to \"auto\" or pass the same value as a flag")
    if ds["train_batch_size"] != micro * gas * world_size:
        raise ConfigError(f"{source} sets train_batch_size={ds['train_batch_size']}, but micro batch {micro} x "
                          f"accumulation {gas} x world size {world_size} = {micro * gas * world_size}: "
                          f"set it to \"auto\"")
    _set(ds, "gradient_clipping", t.max_grad_norm, config, "max_grad_norm", source)
    ds.setdefault("gradient_clipping", t.max_grad_norm)

    if "optimizer" in ds:
        _set(ds, "optimizer.params.lr", t.learning_rate, config, "learning_rate", source)
        _set(ds, "optimizer.params.weight_decay", t.weight_decay, config, "weight_decay", source)
        _set(ds, "optimizer.params.eps", t.adam_epsilon, config, "adam_epsilon", source)
        betas_flag = "adam_beta1" if "adam_beta1" in config.given else "adam_beta2"
        _set(ds, "optimizer.params.betas", [t.adam_beta1, t.adam_beta2], config, betas_flag, source)
        params = ds["optimizer"].setdefault("params", {})
        # Keys the JSON leaves out would silently take DeepSpeed's defaults (lr 1e-3): the flags fill them.
        params.setdefault("lr", t.learning_rate)
        params.setdefault("weight_decay", t.weight_decay)
        params.setdefault("eps", t.adam_epsilon)
        params.setdefault("betas", [t.adam_beta1, t.adam_beta2])
        offload = ds.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")
        if on_cpu and offload in (None, "none") and ds["optimizer"].get("type", "").lower() in ("adam", "adamw"):
            # On CPU DeepSpeed would JIT-compile fused Adam for a minute; torch's Adam is as fast here.
            params.setdefault("torch_adam", True)
    if "scheduler" in ds:
        if "lr_scheduler_type" in config.given:
            raise ConfigError(f"{source} has a scheduler section and --lr_scheduler_type is given: drop one "
                              f"(without the section, --lr_scheduler_type picks a transformers scheduler)")
        kind = ds["scheduler"].get("type")
        if kind not in SCHEDULER_TYPES:
            raise ConfigError(f"{source}: unknown scheduler type {kind!r}; use one of {sorted(SCHEDULER_TYPES)} "
                              f"or drop the section to use --lr_scheduler_type")
        sched = ds["scheduler"].setdefault("params", {})
        sched.setdefault("warmup_num_steps", warmup_steps)
        sched.setdefault("warmup_max_lr", t.learning_rate)
        if kind in ("WarmupDecayLR", "WarmupCosineLR"):
            sched.setdefault("total_num_steps", total_steps)
        _set(ds, "scheduler.params.warmup_num_steps", warmup_steps, config, "warmup_steps", source)
        _set(ds, "scheduler.params.total_num_steps", total_steps, config, "max_steps", source)
        _set(ds, "scheduler.params.warmup_max_lr", t.learning_rate, config, "learning_rate", source)
        _set(ds, "scheduler.params.warmup_min_lr", 0.0, config, None, source)
        _set(ds, "scheduler.params.cos_min_ratio", 0.0, config, None, source)

    for precision in ("bf16", "fp16"):
        flag_value = getattr(t, precision)
        _set(ds, f"{precision}.enabled", flag_value, config, precision, source)
        if flag_value:
            ds.setdefault(precision, {})["enabled"] = True
    if ds.get("bf16", {}).get("enabled") and ds.get("fp16", {}).get("enabled"):
        raise ConfigError(f"{source} enables both bf16 and fp16 (with the flags): pick one precision")
    if on_cpu and ds.get("fp16", {}).get("enabled"):
        raise ConfigError("fp16 needs a GPU and this machine has none: use --bf16, or drop fp16 from "
                          f"{source}")

    if hidden_size:
        _set(ds, "zero_optimization.reduce_bucket_size", hidden_size * hidden_size, config, None, source)
        _set(ds, "zero_optimization.stage3_prefetch_bucket_size", int(0.9 * hidden_size * hidden_size),
             config, None, source)
        _set(ds, "zero_optimization.stage3_param_persistence_threshold", 10 * hidden_size, config, None, source)
    leftover = _autos(ds)
    if leftover:
        raise ConfigError(f"{source}: dslm cannot resolve \"auto\" for {leftover[0]}: set a value")
    ds.setdefault("steps_per_print", 2**31 - 1)  # dslm reports progress itself
    return ds


def _autos(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _autos(v, f"{prefix}{k}.")]
    return [prefix.rstrip(".")] if node == "auto" else []
