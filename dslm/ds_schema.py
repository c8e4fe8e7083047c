"""What DeepSpeed accepts in a JSON config, checked before any work: known keys (with the nearest
one for a typo), value types against DeepSpeed's own pydantic models, optimizer and scheduler
parameters against the classes DeepSpeed will build, and offload against the ops it needs."""

from __future__ import annotations

import importlib.util
import inspect
import math
from pathlib import Path
from typing import Any

from dslm.config import OPTIMIZER_LIMIT
from dslm.ds_ops import op_problem
from dslm.errors import ConfigError, first_line, suggest

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
    "disable_python_gc", "expert_parallel", "gradient_allreduce_op", "log_level", "managed_gradient_accumulation",
}
SECTION_KEYS = {"optimizer": {"type", "params", "legacy_fusion"}, "scheduler": {"type", "params"}}
# Optimizers that are C++/CUDA ops DeepSpeed builds on first use (the CPU ones are checked with offload).
FUSED_OPS = {"FusedAdam": "FusedAdamBuilder", "FusedLamb": "FusedLambBuilder", "FusedLion": "FusedLionBuilder"}
# Optimizer parameters DeepSpeed takes out before calling the optimizer class (engine.py).
DS_OPTIMIZER_KEYS = {"torch_adam", "adam_w_mode", "fp32_optimizer_states"}
SCHEDULER_TYPES = {"WarmupLR", "WarmupDecayLR", "WarmupCosineLR", "OneCycle", "LRRangeTest"}


def check(p: Path, ds: Any) -> None:
    """Everything about the JSON that needs no flags: structure, keys, types, offload."""
    if not isinstance(ds, dict):
        raise ConfigError(f"--deepspeed {p} must hold a JSON object")
    for key in ds:
        if key not in KNOWN_KEYS:
            raise ConfigError(f"--deepspeed {p}: unknown key {key!r}{suggest(key, KNOWN_KEYS)}; DeepSpeed would "
                              f"ignore it")
    for key in ("gradient_allreduce_op", "managed_gradient_accumulation"):
        if key in ds:  # dslm's loss is normalized assuming DeepSpeed averages over ranks and accumulation steps
            raise ConfigError(f"--deepspeed {p}: {key} changes how DeepSpeed sums gradients, which dslm's loss (the "
                              f"tokens of the whole step over every rank) relies on: remove it")
    for key in ("zero_optimization", "optimizer", "scheduler", "bf16", "fp16"):
        if key in ds and not isinstance(ds[key], dict):
            raise ConfigError(f"--deepspeed {p}: {key} must be a JSON object, got {ds[key]!r}")
    zero = ds.get("zero_optimization", {})
    for key in ("offload_optimizer", "offload_param"):
        if key in zero and not isinstance(zero[key], dict):
            raise ConfigError(f"--deepspeed {p}: zero_optimization.{key} must be a JSON object, got {zero[key]!r}")
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2, 3) or isinstance(stage, bool):
        raise ConfigError(f"--deepspeed {p}: zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r}")
    check_zero_keys(p, zero)
    _check_sections(p, ds)
    _check_offload(p, ds)


def _validated(path: Path, section: str, model: type, values: dict[str, Any]) -> Any:
    """DeepSpeed's own pydantic model of a section: unknown keys and wrong types, refused now rather
    than as a traceback inside deepspeed.initialize (or, for some keys, silently ignored)."""
    for key in values:
        if key not in _field_names(model):
            hint = suggest(key, _field_names(model))
            raise ConfigError(f"--deepspeed {path}: unknown {section} key {key!r}{hint}: fix or remove it")
    try:
        return model(**values)
    except (ValueError, TypeError, AssertionError) as exc:  # pydantic's ValidationError is a ValueError
        errors = getattr(exc, "errors", None)
        if callable(errors) and errors():
            first = errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            detail = f"{where}: {first['msg']} (got {first.get('input')!r})"
        else:
            detail = first_line(exc)
        raise ConfigError(f"--deepspeed {path}: {section}.{detail}: fix the value") from None


def _field_names(model: type) -> set[str]:
    names = set(model.model_fields)
    return names | {f.alias for f in model.model_fields.values() if f.alias}


def _check_sections(path: Path, ds: dict[str, Any]) -> None:
    from deepspeed.runtime.precision_config import DeepSpeedBF16Config, DeepSpeedFP16Config
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    _validated(path, "zero_optimization", DeepSpeedZeroConfig, ds.get("zero_optimization", {}))
    for key, model in (("fp16", DeepSpeedFP16Config), ("bf16", DeepSpeedBF16Config), ("bfloat16", DeepSpeedBF16Config)):
        if key in ds:
            if not isinstance(ds[key], dict):
                raise ConfigError(f"--deepspeed {path}: {key} must be a JSON object, got {ds[key]!r}")
            _validated(path, key, model, ds[key])
    for section, known in SECTION_KEYS.items():
        if section not in ds:
            continue
        for key in ds[section]:
            if key not in known:
                raise ConfigError(f"--deepspeed {path}: unknown {section} key {key!r}; {section} takes "
                                  f"{', '.join(sorted(known))}")
        if not isinstance(ds[section].get("type"), str):
            raise ConfigError(f"--deepspeed {path}: {section} needs a \"type\" (a name), got "
                              f"{ds[section].get('type')!r}")
        if not isinstance(ds[section].get("params", {}), dict):
            raise ConfigError(f"--deepspeed {path}: {section}.params must be a JSON object")
    if "optimizer" in ds:
        optimizer_class(path, ds["optimizer"]["type"], {}, offload=False)  # the type is known
    if "scheduler" in ds:
        scheduler_class(path, ds["scheduler"]["type"])
    _check_scalars(path, ds)


def _bool_keys() -> set[str]:
    """Top-level switches, from DeepSpeed's constants (KEY = "name", KEY_DEFAULT = a bool)."""
    from deepspeed.runtime import constants

    names = (getattr(constants, attr[: -len("_DEFAULT")], None) for attr in dir(constants)
             if attr.endswith("_DEFAULT") and isinstance(getattr(constants, attr), bool))
    return {name for name in names if name in KNOWN_KEYS}


def _check_scalars(path: Path, ds: dict[str, Any]) -> None:
    """Top-level values DeepSpeed reads without validating: a string here fails at the first step."""
    for key in ("gradient_clipping", "gradient_predivide_factor"):
        value = ds.get(key, "auto")
        if value != "auto" and not (number(value, 0) and math.isfinite(value)):
            raise ConfigError(f"--deepspeed {path}: {key} must be a number >= 0, got {value!r}")
    steps = ds.get("steps_per_print", 1)
    if not (isinstance(steps, int) and not isinstance(steps, bool) and steps > 0):
        raise ConfigError(f"--deepspeed {path}: steps_per_print must be a positive integer, got {steps!r}")
    for key in sorted(_bool_keys() & set(ds)):
        if not isinstance(ds[key], bool):
            raise ConfigError(f"--deepspeed {path}: {key} must be true or false, got {ds[key]!r}")


def number(value: Any, low: float, high: float = math.inf) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value < high


def offload_device(zero: dict[str, Any], key: str) -> str:
    return str(zero.get(key, {}).get("device", "none") or "none")


def _check_offload(path: Path, ds: dict[str, Any]) -> None:
    """Offload that DeepSpeed would accept only to fail at init or at the first step."""
    zero = ds.get("zero_optimization", {})
    stage = zero.get("stage", 0)
    optimizer_device, param_device = offload_device(zero, "offload_optimizer"), offload_device(zero, "offload_param")
    if param_device != "none" and stage != 3:
        raise ConfigError(f"--deepspeed {path}: zero_optimization.offload_param needs stage 3 (got stage {stage}): "
                          f"set stage 3 or remove offload_param")
    if optimizer_device != "none" and stage == 0:
        raise ConfigError(f"--deepspeed {path}: zero_optimization.offload_optimizer needs stage 1, 2 or 3: set a stage "
                          f"or remove offload_optimizer")
    for key, device in (("offload_optimizer", optimizer_device), ("offload_param", param_device)):
        if device == "nvme":
            _check_nvme(path, key, zero[key].get("nvme_path"))
    if optimizer_device != "none":
        _check_cpu_optimizer(path, ds)


def _check_nvme(path: Path, key: str, nvme_path: Any) -> None:
    if not nvme_path or nvme_path == "auto":
        raise ConfigError(f"--deepspeed {path}: zero_optimization.{key} offloads to nvme but has no nvme_path: "
                          f"set it to a directory on the NVMe drive")
    if not Path(nvme_path).is_dir():
        raise ConfigError(f"--deepspeed {path}: zero_optimization.{key}.nvme_path {nvme_path} is not a directory: "
                          f"create it or fix the path")
    problem = op_problem("AsyncIOBuilder")
    if problem:
        raise ConfigError(f"--deepspeed {path}: nvme offload needs DeepSpeed's async_io op ({problem}): install "
                          f"libaio (apt install libaio-dev) and reinstall deepspeed, or offload to cpu")


def _check_cpu_optimizer(path: Path, ds: dict[str, Any]) -> None:
    """With optimizer offload DeepSpeed runs its own CPU optimizer (a C++ op) and refuses others."""
    force = ds.get("zero_force_ds_cpu_optimizer", True)
    optimizer = ds.get("optimizer")
    if optimizer is None:
        if force:
            raise ConfigError(f"--deepspeed {path}: optimizer offload needs an optimizer section (e.g. "
                              f"{{\"type\": \"AdamW\"}}) so DeepSpeed runs its CPU Adam: add one")
        return
    kind = optimizer["type"].lower()
    torch_adam = optimizer.get("params", {}).get("torch_adam", False)
    builder = {"adam": "CPUAdamBuilder", "adamw": "CPUAdamBuilder", "lion": "CPULionBuilder",
               "adagrad": "CPUAdagradBuilder"}.get(kind)
    if force and (builder is None or kind == "adagrad" or torch_adam):
        raise ConfigError(f"--deepspeed {path}: optimizer offload runs DeepSpeed's CPU Adam or Lion only (got "
                          f"{optimizer['type']}{' with torch_adam' if torch_adam else ''}): use type AdamW, or set "
                          f"zero_force_ds_cpu_optimizer false")
    if builder is None or torch_adam:
        return
    problem = op_problem(builder)
    if problem:
        from deepspeed.accelerator import get_accelerator

        op = get_accelerator().create_op_builder(builder)
        raise ConfigError(f"--deepspeed {path}: optimizer offload needs DeepSpeed's {op.name} op, which is not built "
                          f"and {problem}: install g++ and ninja (pip install ninja), or prebuild it "
                          f"({op.BUILD_VAR}=1 pip install deepspeed), or drop the offload")


def optimizer_class(path: Path | str, kind: str, params: dict[str, Any], *, offload: bool) -> Any:
    """The class DeepSpeed will instantiate for optimizer `kind` (engine._configure_basic_optimizer)."""
    import torch

    lower = kind.lower()
    if lower in ("adam", "adamw"):
        if params.get("torch_adam"):
            return torch.optim.AdamW if lower == "adamw" or params.get("adam_w_mode", True) else torch.optim.Adam
        if offload:
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            return DeepSpeedCPUAdam
        from deepspeed.ops.adam import FusedAdam

        return FusedAdam
    if lower == "adagrad":
        return torch.optim.Adagrad
    if lower == "lamb":
        from deepspeed.ops.lamb import FusedLamb

        return FusedLamb
    if lower == "lion":
        from deepspeed.ops.lion import DeepSpeedCPULion, FusedLion

        return DeepSpeedCPULion if offload else FusedLion
    if lower in ("muadam", "muadamw", "musgd", "muon"):
        if lower != "muon" and importlib.util.find_spec("mup") is None:
            raise ConfigError(f"--deepspeed {path}: optimizer type {kind} needs the mup package: pip install mup")
        return None  # built from parameter groups by DeepSpeed; its parameters are checked there
    candidate = getattr(torch.optim, kind, None)
    if isinstance(candidate, type) and issubclass(candidate, torch.optim.Optimizer):
        return candidate
    raise ConfigError(f"--deepspeed {path}: unknown optimizer type {kind!r}: use AdamW (or Adam, Lamb, Lion, Adagrad, "
                      f"or a torch.optim class name)")


def scheduler_class(path: Path | str, kind: str) -> Any:
    if kind not in SCHEDULER_TYPES:
        raise ConfigError(f"--deepspeed {path}: unknown scheduler type {kind!r}; use one of {sorted(SCHEDULER_TYPES)} "
                          f"or drop the section to use --lr_scheduler_type")
    from deepspeed.runtime import lr_schedules

    return getattr(lr_schedules, kind)


def parameters(cls: Any) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self", "params", "model_params", "optimizer"}


def check_optimizer(source: str, ds: dict[str, Any]) -> None:
    """Names and values of optimizer.params as the class DeepSpeed picks will take them."""
    optimizer = ds["optimizer"]
    params = optimizer.get("params", {})
    offload = offload_device(ds.get("zero_optimization", {}), "offload_optimizer") != "none"
    cls = optimizer_class(source, optimizer["type"], params, offload=offload)
    if cls is None:
        return
    builder = FUSED_OPS.get(cls.__name__)
    problem = builder and op_problem(builder)
    if problem:
        raise ConfigError(f"{source}: optimizer type {optimizer['type']} runs DeepSpeed's {cls.__name__} op, and "
                          f"{problem}: use AdamW")
    allowed = parameters(cls) | DS_OPTIMIZER_KEYS | ({"foreach"} if params.get("torch_adam") else set())
    for key in params:
        if key not in allowed:
            hint = "; use gradient_clipping (or --max_grad_norm)" if key == "max_grad_norm" else ""
            raise ConfigError(f"{source}: {cls.__name__} takes no parameter {key!r} (optimizer.params){hint}: "
                              f"remove it")
    betas = params.get("betas", [0.9, 0.999])
    if not (isinstance(betas, (list, tuple)) and len(betas) == 2 and all(number(b, 0, 1) for b in betas)):
        raise ConfigError(f"{source}: optimizer.params.betas must be two numbers in [0, 1), got {betas!r}")
    for key in ("lr", "eps", "weight_decay"):
        if key in params and not number(params[key], 0, OPTIMIZER_LIMIT):
            raise ConfigError(f"{source}: optimizer.params.{key} must be a number from 0 to {OPTIMIZER_LIMIT:g}, got "
                              f"{params[key]!r}")
    import torch

    if issubclass(cls, torch.optim.Optimizer) and cls.__module__.startswith("torch."):
        try:  # torch checks its own arguments cheaply; a bad one would otherwise fail inside deepspeed.initialize
            cls([torch.zeros(1, requires_grad=True)], **{k: v for k, v in params.items() if k in parameters(cls)})
        except (ValueError, TypeError, RuntimeError) as exc:
            raise ConfigError(f"{source}: optimizer.params are not valid for {cls.__name__} ({exc}): "
                              f"fix them") from None


def _numeric(param: inspect.Parameter) -> bool:
    """A parameter declared (by annotation or default) as an int or float, not a bool."""
    default = param.default
    return param.annotation in (int, float, "int", "float") or (
        isinstance(default, (int, float)) and not isinstance(default, bool))


def check_scheduler(source: str, ds: dict[str, Any]) -> None:
    """Build the scheduler on a stand-in optimizer: what deepspeed.initialize would do, minus the model."""
    import torch

    scheduler = ds["scheduler"]
    cls = scheduler_class(source, scheduler.get("type"))
    params = scheduler.get("params", {})
    for key in params:
        if key not in parameters(cls):
            raise ConfigError(f"{source}: {cls.__name__} takes no parameter {key!r} (scheduler.params): use "
                              f"{', '.join(sorted(parameters(cls)))}")
    signature = inspect.signature(cls.__init__).parameters
    for key, value in params.items():
        if _numeric(signature[key]) and not (value is None and signature[key].default is None) and not (
                number(value, -math.inf) and math.isfinite(value)):
            raise ConfigError(f"{source}: scheduler.params.{key} must be a number, got {value!r}")
        if ("lr" in key.split("_") or key.endswith("_mom")) and number(value, -math.inf) and not number(
                value, 0, OPTIMIZER_LIMIT):  # learning rates and momenta reach the float32 optimizer
            raise ConfigError(f"{source}: scheduler.params.{key} must be a number from 0 to {OPTIMIZER_LIMIT:g}, got "
                              f"{value!r}")
    # AdamW, like the real optimizer, has betas: OneCycle cycles them.
    optimizer = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=0.1)
    try:  # a scheduler does its arithmetic on first use: construct it and take one step
        cls(optimizer, **params).step()
    except Exception as exc:  # DeepSpeed's schedulers validate with asserts and arithmetic on the values
        detail = first_line(exc)
        raise ConfigError(f"{source}: scheduler.params are not valid for {cls.__name__} ({detail}): fix them") from None


def check_zero_keys(path: Path, zero: dict[str, Any]) -> None:
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    for key in zero:
        if key not in _field_names(DeepSpeedZeroConfig):
            raise ConfigError(f"--deepspeed {path}: unknown zero_optimization key {key!r}"
                              f"{suggest(key, _field_names(DeepSpeedZeroConfig))}: fix or remove it")
