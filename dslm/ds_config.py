"""Read a DeepSpeed JSON config and resolve its "auto" values from the run's flags.

"auto" is a Hugging Face Trainer convention: DeepSpeed itself rejects it at the top level and
silently replaces it with its own defaults inside `zero_optimization`, so every "auto" must be
resolved here. A value set in the JSON that contradicts a flag the user gave is refused.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from dslm import ds_schema
from dslm.config import RunConfig
from dslm.errors import ConfigError

DEFAULT_DIR = Path(__file__).resolve().parent / "ds_configs"  # the repo's ds_configs/ links here
MIN_REDUCE_BUCKET = 1_000_000  # elements: the smallest "auto" gradient bucket (see resolve)


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
    ds_schema.check(p, ds)
    return ds


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


def resolve(ds_in: dict[str, Any], config: RunConfig, *, world_size: int, hidden_size: int | None, on_cpu: bool,
            source: str, total_steps: int | None, warmup_steps: int | None) -> dict[str, Any]:
    """Return a copy of `ds_in` with every "auto" filled and values checked against the flags.

    The schedule (total and warmup steps) of an epoch-based run is known only once the data is: with
    None for either, the scheduler's step counts wait for `set_schedule`, the rest is final.
    """
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
    _check_global_batch(ds["train_batch_size"], micro, gas, world_size, source)
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
        ds_schema.check_optimizer(source, ds)
    if "scheduler" in ds:
        if "lr_scheduler_type" in config.given:
            raise ConfigError(f"{source} has a scheduler section and --lr_scheduler_type is given: drop one "
                              f"(without the section, --lr_scheduler_type picks a transformers scheduler)")
        _fill_schedule(ds, config, source, total_steps, warmup_steps)
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
        # The Trainer's hidden^2 alone gives small models tiny buckets: a 5.5M-parameter GPT-2 (hidden 256) reduced
        # its gradients in dozens of collectives per step and trained 10-15% slower on 2 CPU ranks than with 1M-element
        # buckets (5M was no faster, and a BERT of that size peaked 250 MB higher with it).
        _set(ds, "zero_optimization.reduce_bucket_size", max(hidden_size * hidden_size, MIN_REDUCE_BUCKET), config,
             None, source)
        _set(ds, "zero_optimization.stage3_prefetch_bucket_size", int(0.9 * hidden_size * hidden_size),
             config, None, source)
        _set(ds, "zero_optimization.stage3_param_persistence_threshold", 10 * hidden_size, config, None, source)
    ds.setdefault("steps_per_print", 2**31 - 1)  # dslm reports progress itself
    if total_steps is not None and warmup_steps is not None:
        _finish(ds, source)
    else:
        _autos_left(ds, source, waiting=SCHEDULE_KEYS)
    return ds


SCHEDULE_KEYS = ("scheduler.params.warmup_num_steps", "scheduler.params.total_num_steps")


def set_schedule(ds: dict[str, Any], config: RunConfig, *, total_steps: int, warmup_steps: int,
                 source: str) -> None:
    """The scheduler's step counts, once the data has told the schedule (after `resolve` without them)."""
    if "scheduler" in ds:
        _fill_schedule(ds, config, source, total_steps, warmup_steps)
    _finish(ds, source)


def _fill_schedule(ds: dict[str, Any], config: RunConfig, source: str, total_steps: int | None,
                   warmup_steps: int | None) -> None:
    accepted = ds_schema.parameters(ds_schema.scheduler_class(source, ds["scheduler"].get("type")))
    sched = ds["scheduler"].setdefault("params", {})
    # Only what the class takes: OneCycle has no warmup, WarmupCosineLR no warmup_max_lr.
    for key, value in (("warmup_num_steps", warmup_steps), ("warmup_max_lr", config.train.learning_rate),
                       ("total_num_steps", total_steps)):
        if key in accepted and value is not None:
            sched.setdefault(key, value)
    if warmup_steps is not None:
        _set(ds, "scheduler.params.warmup_num_steps", warmup_steps, config, "warmup_steps", source)
    if total_steps is not None:
        _set(ds, "scheduler.params.total_num_steps", total_steps, config, "max_steps", source)


def _finish(ds: dict[str, Any], source: str) -> None:
    if "scheduler" in ds:
        ds_schema.check_scheduler(source, ds)
    _autos_left(ds, source)


def _autos_left(ds: dict[str, Any], source: str, waiting: tuple[str, ...] = ()) -> None:
    leftover = [key for key in _autos(ds) if key not in waiting]
    if leftover:
        raise ConfigError(f"{source}: dslm cannot resolve \"auto\" for {leftover[0]}: set a value")


def _check_global_batch(global_batch: Any, micro: int, gas: int, world: int, source: str) -> None:
    """DeepSpeed asserts train_batch_size == micro x accumulation x world size at init: say which to change."""
    made = micro * gas * world
    if global_batch == made:
        return
    head = (f"{source} sets train_batch_size={global_batch!r}, but micro batch {micro} x accumulation {gas} x world "
            f"size {world} = {made}")
    if isinstance(global_batch, int) and global_batch > 0 and global_batch % (micro * world) == 0:
        raise ConfigError(f"{head}: pass --gradient_accumulation_steps {global_batch // (micro * world)}, or set it "
                          f"to \"auto\"")
    if isinstance(global_batch, int) and global_batch > 0:
        raise ConfigError(f"{head}: {world} ranks with micro batches of {micro} cannot make {global_batch}; set it to "
                          f"\"auto\", or change --per_device_train_batch_size or the number of ranks")
    raise ConfigError(f"{head}: set it to \"auto\" or a positive integer")


def _autos(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _autos(v, f"{prefix}{k}.")]
    return [prefix.rstrip(".")] if node == "auto" else []
