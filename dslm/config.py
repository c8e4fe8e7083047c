"""Run settings: one dataclass per concern, each field with a default and one line of help.

These dataclasses are the single source of truth: the CLI builds its flags (names, defaults,
help) from them, and every other module reads settings from a validated `RunConfig`.
Flag names follow Hugging Face's run_mlm.py / run_clm.py / run_plm.py and `TrainingArguments`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dslm import config_file, inputs
from dslm.data import spec
from dslm.errors import ConfigError, suggest

OBJECTIVES = ("mlm", "clm", "plm")
ON_NAN = ("stop", "skip")
TRACKERS = ("wandb", "tensorboard")  # --report_to also takes all (every one installed) and none
LOG_MODEL = ("end", "checkpoint", "false")  # the Trainer's WANDB_LOG_MODEL values
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt")


INT_LIMIT = 2**31 - 1  # token ids are int32 in the cache; counts go to C++ code as 32-bit ints
# The optimizer's numbers meet float32 parameters: far above any useful value, far below the ~3e38
# where the update overflows (a traceback inside the optimizer's step, not a NaN loss).
OPTIMIZER_LIMIT = 1e6
MAX_TIMEOUT_MINUTES = 1_000_000  # about two years: more is no timeout, and far more overflows timedelta


def _help(text: str, default: Any = None) -> Any:
    kw = {"default_factory": default} if callable(default) else {"default": default}
    return field(metadata={"help": text}, **kw)


@dataclass
class ModelConfig:
    objective: str | None = _help("mlm, clm or plm; default: from the model (gpt2 -> clm, xlnet -> plm, else mlm)")
    model_name_or_path: str | None = _help("pretrained model directory (or hub id) to continue pretraining")
    model_type: str | None = _help("from scratch: bert, roberta, distilbert, gpt2, xlnet, ...; "
                                   "default: a small bert when no model is given")
    config_overrides: str | None = _help('from scratch: config overrides, e.g. "num_hidden_layers=4,hidden_size=256"')
    tokenizer_name: str | None = _help("tokenizer directory; default: the model's, or one trained on the corpus")
    vocab_size: int = _help("vocabulary size of a tokenizer trained on the corpus", 8000)
    trust_remote_code: bool = _help("allow model code from the model directory (off: it runs arbitrary code)", False)
    resize_token_embeddings: bool = _help("grow a pretrained model's embedding table when the tokenizer has more "
                                          "tokens (new rows start random); without it dslm refuses", False)


@dataclass
class ObjectiveConfig:
    mlm_probability: float = _help("mlm: fraction of tokens masked", 0.15)
    whole_word_mask: bool = _help("mlm: mask every sub-token of a chosen word together", False)
    plm_probability: float = _help("plm: ratio of span length to surrounding context length", 1 / 6)
    max_span_length: int = _help("plm: longest span of tokens masked", 5)


@dataclass
class DataConfig:
    train_file: str | None = _help("training text: .txt, .json/.jsonl, .csv or .parquet")
    validation_file: str | None = _help("validation text, same formats; or name=path pairs, comma-separated: several "
                                        "named validation sets; default: a split of the training data")
    dataset_name: str | None = _help("a dataset for datasets.load_dataset instead of files")
    dataset_config_name: str | None = _help("the dataset's configuration name")
    text_column: str | None = _help('column holding the text; default "text", else the only string column')
    sample_by: str = _help(".txt files: what one document is: line (each non-empty line, as run_*lm.py), paragraph "
                           "(blank-line separated) or document (the whole file)", "line")
    data_spec: str | None = _help("YAML or JSON file: training sources mixed by weight and named validation sets "
                                  "(instead of --train_file/--dataset_name; see the README)")
    validation_split_percentage: float = _help("percent of the training data held out when there is no "
                                               "validation data", 5.0)
    max_seq_length: int = _help("tokens per example: block size when packing, truncation when line_by_line", 128)
    line_by_line: bool = _help("one example per non-empty line, padded per batch, instead of packed blocks", False)
    reset_attention_mask: bool = _help("packed blocks: position ids restart at each document and attention stays "
                                       "inside it (Megatron's --reset-attention-mask and --reset-position-ids)",
                                       False)
    preprocessing_num_workers: int | None = _help("processes used to tokenize")
    cache_dir: str | None = _help("where tokenized data is cached; default OUTPUT_DIR/cache")
    overwrite_cache: bool = _help("rebuild the tokenized cache even when a matching one exists", False)
    max_train_samples: int | None = _help("keep only the first N training examples (after packing)")
    max_eval_samples: int | None = _help("keep only the first N validation examples (after packing)")
    streaming: bool = _help("stream and tokenize on the fly, no cache (needs --max_steps)", False)
    tokenizer_train_samples: int = _help("rows of the training data (drawn the same way on every run) that train "
                                         "a new tokenizer", 100_000)
    num_shards: int | None = _help("the cache is prepared in N slices (dslm prepare --shard_index I on N "
                                   "machines); default: one, or the complete set found in the cache")
    shard_index: int | None = _help("dslm prepare: build slice I of --num_shards only")


@dataclass
class TrainConfig:
    output_dir: str = _help("where metrics, checkpoints and the final model go", "output")
    overwrite_output_dir: bool = _help("start over in an output dir that already holds a run", False)
    deepspeed: str = _help("DeepSpeed JSON config; 'auto' values are filled from these flags",
                           "ds_configs/zero2.json")
    per_device_train_batch_size: int = _help("micro batch per rank", 8)
    per_device_eval_batch_size: int = _help("eval batch per rank", 8)
    gradient_accumulation_steps: int = _help("micro batches per optimizer step", 1)
    learning_rate: float = _help("peak learning rate (a pretraining default; the HF Trainer's 5e-5 suits "
                                 "fine-tuning)", 5e-4)
    weight_decay: float = _help("AdamW weight decay", 0.0)
    adam_beta1: float = _help("AdamW beta1", 0.9)
    adam_beta2: float = _help("AdamW beta2", 0.999)
    adam_epsilon: float = _help("AdamW epsilon", 1e-8)
    max_grad_norm: float = _help("gradient clipping norm (0 disables)", 1.0)
    lr_scheduler_type: str = _help("linear, cosine, cosine_with_restarts, polynomial, constant, "
                                   "constant_with_warmup or inverse_sqrt", "linear")
    warmup_steps: int = _help("linear warmup steps", 0)
    warmup_ratio: float = _help("warmup as a fraction of all steps (used when --warmup_steps is 0)", 0.0)
    num_train_epochs: float = _help("epochs over the training data (ignored when --max_steps > 0)", 3.0)
    max_steps: int = _help("optimizer steps; > 0 overrides --num_train_epochs", -1)
    logging_steps: int = _help("log train figures every N steps", 50)
    logging_first_step: bool = _help("also log the first step (its time shows the time to first step)", False)
    eval_steps: int | None = _help("evaluate every N steps; evaluation also runs before and after training")
    save_steps: int = _help("save a sharded DeepSpeed checkpoint every N steps (0: only at the end)", 500)
    save_total_limit: int = _help("keep only the newest N committed checkpoints (milestones aside) so the disk "
                                  "never fills; 0 keeps every one (unbounded)", 2)
    save_milestone_steps: int | None = _help("also keep every checkpoint whose step is a multiple of N, forever")
    resume_from_checkpoint: str = _help("auto: continue from the newest good checkpoint in the output dir; "
                                        "a checkpoint path; or none: start fresh", "auto")
    seed: int = _help("random seed: the same seed and flags give the same losses", 42)
    bf16: bool = _help("train in bfloat16 mixed precision", False)
    fp16: bool = _help("train in float16 mixed precision (GPU only)", False)
    dataloader_num_workers: int = _help("DataLoader worker processes per rank", 0)
    torch_compile: bool = _help("compile the model with torch.compile under the engine (the first steps take "
                                "longer while it compiles)", False)
    gradient_checkpointing: bool = _help("recompute activations in backward: less memory, about a third more "
                                         "compute", False)
    chunked_cross_entropy: bool = _help("clm/plm: the output projection and the loss a chunk of rows at a time, "
                                        "never the whole logits (the same loss and gradients, far less memory); "
                                        "false: the plain head", True)
    block_attention: bool = _help("CPU training with attention dropout: attention a block of query rows at a time, "
                                  "keeping no sequence x sequence tensor for the backward (SDPA takes its "
                                  "memory-hungry math path there); false: SDPA as transformers calls it", True)
    fused_gelu: bool = _help("compute gelu_new (GPT-2's activation) with PyTorch's one-kernel tanh GELU, which "
                             "keeps only its input for the backward; false: transformers' Python formula", True)
    profile: str | None = _help("profile optimizer steps A-B (or one step N): a torch.profiler trace in "
                                "OUTPUT_DIR/profile for Perfetto and TensorBoard, and the top operators at the end "
                                "(rank 0)")
    on_nan: str = _help("a step whose loss or gradients hold inf/NaN: stop (keep the last checkpoint as latest "
                        "and exit 3) or skip (drop its update, count it, go on)", "stop")
    dist_timeout: float = _help("minutes a collective waits for the other ranks before the job fails, so a dead "
                                "or hung rank ends the job instead of holding the nodes", 30.0)
    do_train: bool = _help("accepted for run_mlm.py compatibility: dslm always trains", True)
    do_eval: bool = _help("accepted for run_mlm.py compatibility: evaluation runs when there is "
                          "validation data", True)


@dataclass
class LoggingConfig:
    report_to: str = _help("trackers beside metrics.jsonl: wandb, tensorboard (event files in OUTPUT_DIR/tensorboard), "
                           "a comma list of them, all (every one installed) or none; W&B runs offline (upload "
                           "later with `wandb sync`) when there is no login, and WANDB_MODE is honoured", "wandb")
    wandb_log_model: str | None = _help("log the model as a W&B artifact: end (the final model), checkpoint (each "
                                        "checkpoint, consolidated) or false; default $WANDB_LOG_MODEL, else false")
    wandb_project: str | None = _help("W&B project; default $WANDB_PROJECT, else dslm")
    wandb_entity: str | None = _help("W&B entity (team or user); default $WANDB_ENTITY")
    wandb_group: str | None = _help("W&B group, to compare runs side by side; default $WANDB_RUN_GROUP")
    wandb_tags: str | None = _help("comma-separated W&B tags; default $WANDB_TAGS")
    run_name: str | None = _help("run name; default $WANDB_NAME, else objective-model-size-zero stage")

    def _named(self) -> list[str]:
        return [name.strip() for name in self.report_to.split(",") if name.strip()]

    @property
    def trackers(self) -> list[str]:
        """The trackers --report_to names, "all" as every one installed."""
        names = self._named()
        if names == ["none"]:
            return []
        if names == ["all"]:
            return [name for name in TRACKERS if importlib.util.find_spec(name) is not None]
        return names

    @property
    def log_model(self) -> str:
        mode = (self.wandb_log_model or os.environ.get("WANDB_LOG_MODEL") or "false").lower()
        return "end" if mode == "true" else mode  # the Trainer still reads its older spelling of end

    def check(self) -> None:
        names = self._named()
        if not names:
            raise ConfigError("--report_to is empty: give wandb, tensorboard, a comma list of them, all or none")
        for name in names:
            if name not in (*TRACKERS, "all", "none"):
                raise ConfigError(f"--report_to {name!r} is not a tracker: use wandb, tensorboard, a comma list of "
                                  f"them, all or none (metrics.jsonl is always written)")
        if len(names) > 1 and {"all", "none"} & set(names):
            raise ConfigError(f"--report_to {self.report_to!r}: all and none stand alone: give one of them, or a "
                              f"comma list of trackers")
        if "tensorboard" in names and importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("--report_to tensorboard: TensorBoard is not installed: pip install tensorboard (or "
                              "dslm[tensorboard]), or leave it out of --report_to")
        if self.log_model not in LOG_MODEL:
            where = "--wandb_log_model" if self.wandb_log_model else "WANDB_LOG_MODEL"
            raise ConfigError(f"{where} {self.log_model!r}: use end (the final model), checkpoint (every checkpoint) "
                              f"or false")
        if self.wandb_log_model and self.log_model != "false" and "wandb" not in self.trackers:
            raise ConfigError(f"--wandb_log_model {self.log_model} logs to W&B, which --report_to "
                              f"{self.report_to} leaves out: add wandb to --report_to, or drop --wandb_log_model")


SECTIONS = {"model": ModelConfig, "objective": ObjectiveConfig, "data": DataConfig, "train": TrainConfig,
            "logging": LoggingConfig}


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    # Flags the user gave explicitly: a DeepSpeed JSON value may only contradict a default.
    given: frozenset[str] = frozenset()

    @classmethod
    def from_flags(cls, config: str | None = None, **flags: Any) -> RunConfig:
        """The settings of a --config file (if any), with the command line's flags over them."""
        unknown = set(flags) - set(all_fields())
        if unknown:
            raise ConfigError(f"unknown flag --{sorted(unknown)[0]}: see `dslm train --help`")
        values = {name: coerce(name, value) for name, value in flags.items()}
        from_file, given_in_file = file_flags(config) if config is not None else ({}, set())
        given = set(values) | given_in_file  # a DeepSpeed JSON value may not contradict what was given
        values = {**from_file, **values}
        sections = {name: section_cls(**{f.name: values[f.name] for f in dataclasses.fields(section_cls)
                                         if f.name in values})
                    for name, section_cls in SECTIONS.items()}
        run_config = cls(**sections, given=frozenset(given))
        run_config.validate()
        return run_config

    def validate(self) -> None:
        m, o, d, t = self.model, self.objective, self.data, self.train
        self._check_number_ranges()
        if m.objective is not None and m.objective not in OBJECTIVES:
            raise ConfigError(f"unknown --objective {m.objective!r}: use one of {', '.join(OBJECTIVES)}")
        if m.model_name_or_path and m.model_type:
            raise ConfigError("--model_name_or_path and --model_type conflict: give a model directory to "
                              "continue pretraining, or a model type to start from scratch")
        if m.model_name_or_path and m.config_overrides:
            raise ConfigError("--config_overrides only applies from scratch: drop it or use --model_type")
        for name, value in (("mlm_probability", o.mlm_probability), ("plm_probability", o.plm_probability)):
            if not 0 < value < 1:
                raise ConfigError(f"--{name} must be between 0 and 1 (exclusive), got {value}")
        positive = {"vocab_size": m.vocab_size, "max_span_length": o.max_span_length,
                    "max_seq_length": d.max_seq_length,
                    "per_device_train_batch_size": t.per_device_train_batch_size,
                    "per_device_eval_batch_size": t.per_device_eval_batch_size,
                    "gradient_accumulation_steps": t.gradient_accumulation_steps,
                    "learning_rate": t.learning_rate, "logging_steps": t.logging_steps,
                    "dist_timeout": t.dist_timeout}
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"--{name} must be positive, got {value}")
        non_negative = {"weight_decay": t.weight_decay, "max_grad_norm": t.max_grad_norm,
                        "warmup_steps": t.warmup_steps, "save_steps": t.save_steps,
                        "dataloader_num_workers": t.dataloader_num_workers, "adam_epsilon": t.adam_epsilon,
                        "save_total_limit": t.save_total_limit}
        for name, value in non_negative.items():
            if value < 0:
                raise ConfigError(f"--{name} must be zero or positive, got {value}")
        for name in ("eval_steps", "max_train_samples", "max_eval_samples", "preprocessing_num_workers",
                     "save_milestone_steps"):
            value = getattr(t, name) if hasattr(t, name) else getattr(d, name)
            if value is not None and value <= 0:
                raise ConfigError(f"--{name} must be positive, got {value}")
        if not 0 <= t.warmup_ratio < 1:
            raise ConfigError(f"--warmup_ratio must be in [0, 1), got {t.warmup_ratio}")
        if not (0 <= t.adam_beta1 < 1 and 0 <= t.adam_beta2 < 1):
            raise ConfigError("--adam_beta1 and --adam_beta2 must be in [0, 1)")
        if t.max_steps == 0 or t.max_steps < -1:
            raise ConfigError(f"--max_steps must be positive, or -1 to train for --num_train_epochs; got {t.max_steps}")
        if t.max_steps == -1 and t.num_train_epochs <= 0:
            raise ConfigError("nothing to train: give --max_steps > 0 or --num_train_epochs > 0")
        for name in ("learning_rate", "weight_decay", "adam_epsilon"):
            if getattr(t, name) > OPTIMIZER_LIMIT:
                raise ConfigError(f"--{name} must be at most {OPTIMIZER_LIMIT:g}, got {getattr(t, name)}: the "
                                  f"optimizer computes in float32")
        if t.dist_timeout > MAX_TIMEOUT_MINUTES:
            raise ConfigError(f"--dist_timeout must be at most {MAX_TIMEOUT_MINUTES} minutes, got {t.dist_timeout}")
        if not t.output_dir.strip():
            raise ConfigError("--output_dir is empty: give a directory")
        if t.lr_scheduler_type not in SCHEDULERS:
            raise ConfigError(f"unknown --lr_scheduler_type {t.lr_scheduler_type!r}: use one of "
                              f"{', '.join(SCHEDULERS)}")
        self.logging.check()
        from dslm import profile  # (imports torch: not at the CLI's start)

        profile.parse(t.profile)
        if t.on_nan not in ON_NAN:
            raise ConfigError(f"unknown --on_nan {t.on_nan!r}: use stop or skip")
        if t.bf16 and t.fp16:
            raise ConfigError("--bf16 and --fp16 conflict: pick one precision")
        if not 0 <= d.validation_split_percentage < 100:
            raise ConfigError("--validation_split_percentage must be in [0, 100), got "
                              f"{d.validation_split_percentage}")
        if d.data_spec and (d.train_file or d.dataset_name or d.validation_file):
            raise ConfigError("--data_spec and --train_file/--dataset_name/--validation_file conflict: put every "
                              "source in the data spec")
        if d.dataset_name and (d.train_file or d.validation_file):
            raise ConfigError("--dataset_name and --train_file/--validation_file conflict: use one data source")
        if d.validation_file and not d.train_file:
            raise ConfigError("--validation_file needs --train_file")
        if d.tokenizer_train_samples < 1:
            raise ConfigError(f"--tokenizer_train_samples must be at least 1, got {d.tokenizer_train_samples}")
        if d.num_shards is not None and d.num_shards < 1:
            raise ConfigError(f"--num_shards must be at least 1, got {d.num_shards}")
        if d.shard_index is not None and d.num_shards is None:
            raise ConfigError("--shard_index needs --num_shards: the number of slices the cache is cut in")
        if d.shard_index is not None and not 0 <= d.shard_index < d.num_shards:
            raise ConfigError(f"--shard_index {d.shard_index} is out of range for --num_shards {d.num_shards}: use "
                              f"0 to {d.num_shards - 1}")
        if d.streaming and (d.num_shards is not None or d.max_train_samples):
            raise ConfigError("--streaming reads the training text as it trains: drop --num_shards/--shard_index "
                              "and --max_train_samples (use --max_steps to bound the run)")
        if d.streaming and t.max_steps <= 0:
            raise ConfigError("--streaming needs --max_steps: a stream has no known length")
        if d.reset_attention_mask and d.line_by_line:
            raise ConfigError("--reset_attention_mask applies to packed blocks and --line_by_line packs nothing: "
                              "drop one of them")
        if d.train_file is not None:
            inputs.check_data_file("train_file", d.train_file, d.text_column)
        if d.validation_file is not None and spec.validation_pairs(d.validation_file) is None:
            inputs.check_data_file("validation_file", d.validation_file, d.text_column)
        spec.check_sample_by("--sample_by", d.sample_by, [d.train_file] if d.train_file else [])
        data_spec = spec.load(d)
        if data_spec is not None and data_spec.when_exhausted == "stop" and d.streaming:
            raise ConfigError("when_exhausted: stop needs every source's length, which a stream does not know: use "
                              "cycle with --streaming (and --max_steps to end the run)")

    def _check_number_ranges(self) -> None:
        """Bounds every number has whatever it means: a finite float, an int that fits the int32 token ids
        and C++ counters downstream, and a seed numpy accepts."""
        for section in SECTIONS:
            values = getattr(self, section)
            for f in dataclasses.fields(values):
                value = getattr(values, f.name)
                if isinstance(value, bool) or value is None:
                    continue
                if isinstance(value, float) and not math.isfinite(value):
                    raise ConfigError(f"--{f.name} must be a finite number, got {value}")
                if isinstance(value, int) and f.name != "seed" and abs(value) > INT_LIMIT:
                    raise ConfigError(f"--{f.name} {value} is out of range: use a value up to {INT_LIMIT}")
        if not 0 <= self.train.seed < 2**32:
            raise ConfigError(f"--seed must be between 0 and {2**32 - 1}, got {self.train.seed}")

    @property
    def uses_builtin_corpus(self) -> bool:
        return not (self.data.train_file or self.data.dataset_name or self.data.data_spec)

    @property
    def cache_dir(self) -> Path:
        return Path(self.data.cache_dir or Path(self.train.output_dir) / "cache")

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}


def all_fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for section in SECTIONS.values() for f in dataclasses.fields(section)}


@functools.cache
def field_types() -> dict[str, type]:
    """Each flag's type, without Optional: the annotations are strings (postponed evaluation)."""
    out = {}
    for section in SECTIONS.values():
        for name, hint in typing.get_type_hints(section).items():
            if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
                hint = next(a for a in typing.get_args(hint) if a is not type(None))
            out[name] = hint
    return out


GIVEN_KEY = "given"  # run_config.json: the flags its run was given (the rest are its defaults)


def file_flags(path: str) -> tuple[dict[str, Any], set[str]]:
    """The settings of a --config file, and which of them count as given: flat keys named as the flags (the JSON
    file of HfArgumentParser), every one given; or grouped by section as run_config.json writes them, every
    flag's value, with the list of those its run was given (so the file reproduces that run: a default stays a
    default, which a DeepSpeed JSON may set)."""
    raw = config_file.parse(path, "--config", "file of flag names and values")
    if not isinstance(raw, dict):
        raise ConfigError(f"--config {path} is not a mapping of flag names to values: write `name: value` lines "
                          f"(YAML) or a JSON object")
    given = raw.pop(GIVEN_KEY, None)
    if given is not None and not (isinstance(given, list) and all(isinstance(n, str) for n in given)):
        raise ConfigError(f"--config {path}: {GIVEN_KEY!r} must be a list of flag names: fix it in the file")
    known = all_fields()
    out: dict[str, Any] = {}

    def put(name: Any, value: Any, choices: Any, section: str | None = None) -> None:
        name = str(name)
        if section and name not in choices and name in known:
            home = next(key for key, cls in SECTIONS.items() if name in {f.name for f in dataclasses.fields(cls)})
            raise ConfigError(f"--config {path}: {name!r} belongs in section {home!r}, not {section!r}: move it")
        if name not in choices:
            hint = suggest(name, choices, " (did you mean {}?)") if choices else ""
            raise ConfigError(f"--config {path}: unknown key {name!r}{hint}: use the names of `dslm train --help`")
        if name in out:
            raise ConfigError(f"--config {path}: {name!r} is given twice: keep one")
        try:
            out[name] = coerce(name, value, from_file=True)
        except ConfigError as exc:
            raise ConfigError(f"--config {path}: {str(exc).removeprefix('--')}: fix it in the file") from None

    for key, value in raw.items():
        if key in SECTIONS and isinstance(value, dict):
            section = {f.name for f in dataclasses.fields(SECTIONS[key])}
            for name, item in value.items():
                put(name, item, section, key)
        else:
            put(key, value, known)
    return out, set(out) if given is None else set(given) & set(out)


def coerce(name: str, value: Any, from_file: bool = False) -> Any:
    """Turn what Fire (or a --config file) parsed into the field's type, or say which flag is wrong."""
    target = field_types()[name]
    if value is None:
        if from_file and all_fields()[name].default is not None:  # Fire cannot pass None, a file can
            raise ConfigError(f"--{name} expects {target.__name__}, got null")
        return None
    if isinstance(value, (dict, list)) and not (target is str and isinstance(value, list)):
        raise ConfigError(f"--{name} expects {target.__name__}, got {value!r}")
    if from_file and target is str and isinstance(value, bool):
        raise ConfigError(f"--{name} expects str, got {value} (YAML reads yes/no/on/off/true/false unquoted as "
                          f"booleans: quote the word)")
    if target is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "1", "yes"):
            return True
        if str(value).lower() in ("false", "0", "no"):
            return False
    elif target is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif target is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    elif target is str:
        if isinstance(value, (tuple, list)):  # Fire splits "a,b" into a tuple
            return ",".join(str(v) for v in value)
        return str(value)
    raise ConfigError(f"--{name} expects {target.__name__}, got {value!r}")
