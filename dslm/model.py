"""Model config and weights: a local or hub model to continue pretraining, or a config from scratch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, PretrainedConfig, PreTrainedTokenizerBase
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

from dslm import objectives
from dslm.config import ConfigError, RunConfig

DEFAULT_FAMILY = "bert"
# The built-in default model: a 2-layer BERT that learns the built-in corpus in minutes on 2 CPU cores.
SMALL_BERT = "hidden_size=128,num_hidden_layers=2,num_attention_heads=2,intermediate_size=512"
# Learned position tables that start counting after the padding index.
PADDING_OFFSET_FAMILIES = {"roberta", "xlm-roberta", "camembert", "roberta-prelayernorm", "data2vec-text"}


def family(config: RunConfig) -> str:
    m = config.model
    if m.model_name_or_path:
        return load_config(config).model_type
    family = m.model_type or DEFAULT_FAMILY
    if family not in CONFIG_MAPPING_NAMES:
        raise ConfigError(f"unknown --model_type {family!r}: use one of bert, roberta, distilbert, gpt2, xlnet "
                          f"(or any transformers model type)")
    return family


def _overrides(config: RunConfig) -> str | None:
    m = config.model
    if not m.model_name_or_path and not m.model_type:
        return ",".join(filter(None, [SMALL_BERT, m.config_overrides]))
    return m.config_overrides


def load_config(config: RunConfig) -> PretrainedConfig:
    m = config.model
    if m.model_name_or_path:
        path = m.model_name_or_path
        # A hub id is NAME or ORG/NAME; a path whose parent directory exists here is meant to be local
        # (asking the hub for it would only add retries and a wait on a machine without internet).
        parent = Path(path).parent
        looks_local = (Path(path).is_absolute() or path.startswith(".") or Path(path).exists() or path.count("/") > 1
                       or (parent != Path(".") and parent.is_dir()))
        if looks_local and not Path(path).is_dir():
            raise ConfigError(f"--model_name_or_path {path}: no such model directory; check the path")
        if looks_local:
            check_config_file(path, m.trust_remote_code)
        try:
            return AutoConfig.from_pretrained(path, trust_remote_code=m.trust_remote_code)
        except (OSError, ValueError) as exc:
            if not looks_local:  # "org/name" is a hub id and a relative path alike
                raise ConfigError(f"--model_name_or_path {path}: no such directory, and the Hugging Face hub did not "
                                  f"provide it ({_first_line(exc)}): check the path or the model id") from None
            raise ConfigError(f"--model_name_or_path {path}: cannot load a model config ({_first_line(exc)}); "
                              f"give a directory with config.json") from None
    fam = family(config)
    try:
        return AutoConfig.for_model(fam, **parse_overrides(_overrides(config), fam))
    except ConfigError:
        raise
    except Exception as exc:  # transformers validates some fields as the config is made, with its own types
        raise ConfigError(f"--config_overrides: not a valid {fam} config ({_first_line(exc)}): "
                          f"fix the values") from None


def check_config_file(path: str, trust_remote_code: bool) -> None:
    """config.json exists, is JSON and names a model type this transformers knows: said plainly, before
    AutoConfig's longer messages."""
    import json

    file = Path(path) / "config.json"
    if not file.is_file():
        raise ConfigError(f"--model_name_or_path {path} has no config.json: give a model directory saved with "
                          f"save_pretrained (or by dslm: OUTPUT_DIR/final)")
    try:
        values = json.loads(file.read_text())
        model_type = values.get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{file} is not a readable JSON object ({_first_line(exc)}): restore the model's "
                          f"config.json") from None
    remote = trust_remote_code and "auto_map" in values  # the model brings its own config class
    if model_type is not None and model_type not in CONFIG_MAPPING_NAMES and not remote:
        raise ConfigError(f"{file} has model_type {model_type!r}, which this transformers does not know: fix "
                          f"model_type, upgrade transformers, or pass --trust_remote_code if the model ships its code")


def parse_overrides(overrides: str | None, family: str) -> dict[str, Any]:
    """run_mlm.py's "key=value,key=value" syntax, typed like the default config's values.

    The values go to the config's constructor (not set afterwards) so derived fields such as
    XLNet's d_head = d_model // n_head are computed from them.
    """
    if not overrides:
        return {}
    defaults = AutoConfig.for_model(family)
    values: dict[str, Any] = {}
    for pair in overrides.split(","):
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--config_overrides: {pair!r} is not key=value; write e.g. "
                              f'"num_hidden_layers=4,hidden_size=256"')
        if not hasattr(defaults, key):
            raise ConfigError(f"--config_overrides: {family} configs have no field {key!r}; check the name")
        current = getattr(defaults, key)
        try:
            if isinstance(current, bool):
                if raw.lower() not in ("true", "false"):
                    raise ValueError(raw)
                value: Any = raw.lower() == "true"
            elif isinstance(current, int):
                value = int(raw)
            elif isinstance(current, float):
                value = float(raw)
            elif current is None:
                value = _guess(raw)
            else:
                value = raw
        except ValueError:
            raise ConfigError(f"--config_overrides: {key}={raw!r} is not a valid {type(current).__name__}") from None
        if isinstance(current, int) and not isinstance(current, bool) and value < 0 <= current:
            # sizes, counts and token ids: a negative one builds nonsense (or a model with no layers)
            raise ConfigError(f"--config_overrides: {key}={raw} must not be negative")
        values[key] = value
    return values


def _guess(raw: str) -> Any:
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(raw.lower(), raw)


def position_limit(model_config: PretrainedConfig) -> int | None:
    limit = getattr(model_config, "max_position_embeddings", None)
    if limit is None or limit < 0:  # XLNet says -1: relative positions have no table to overflow
        return None
    return limit - 2 if model_config.model_type in PADDING_OFFSET_FAMILIES else limit


def fit_positions(model_config: PretrainedConfig, config: RunConfig) -> None:
    """Refuse a sequence longer than a pretrained model's positions; grow them for a model from scratch."""
    seq = config.data.max_seq_length
    limit = position_limit(model_config)
    if limit is None or seq <= limit:
        return
    names = {"max_position_embeddings", model_config.attribute_map.get("max_position_embeddings")}
    overridden = bool(names & set(parse_overrides(config.model.config_overrides, model_config.model_type)))
    if config.model.model_name_or_path or overridden:
        raise ConfigError(f"--max_seq_length {seq} is above the model's position limit {limit}: "
                          f"use --max_seq_length {limit} or less")
    model_config.max_position_embeddings = seq + (limit != model_config.max_position_embeddings) * 2


def resolve(config: RunConfig) -> tuple[str, str, PretrainedConfig]:
    """(model family, objective, model config), with every check that needs no data or devices."""
    fam = family(config)
    objective = config.model.objective or objectives.default_objective(fam)
    objectives.check(objective, fam)
    if objective == "plm" and config.data.max_seq_length % 2:
        raise ConfigError(f"--objective plm needs an even --max_seq_length (got {config.data.max_seq_length})")
    warn_remote_code(config)
    model_config = load_config(config)
    fit_positions(model_config, config)
    if config.model.model_name_or_path:
        check_weights(config.model.model_name_or_path, model_config, objective)
    else:
        check_buildable(model_config, objective)
    check_vocab(config, model_config)
    return fam, objective, model_config


def warn_remote_code(config: RunConfig) -> None:
    """Remote code runs with the user's rights: say so once per job, on rank 0."""
    import os
    import sys

    if config.model.trust_remote_code and int(os.environ.get("RANK", "0")) == 0:
        print("warning: --trust_remote_code runs Python code shipped with the model and tokenizer directories: "
              "use it only with models whose code you trust", file=sys.stderr, flush=True)


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def check_weights(path: str, model_config: PretrainedConfig, objective: str) -> None:
    """A local model directory has weights, and its config.json describes their shapes.

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
                          f"({type(exc).__name__}: {_first_line(exc)}): restore the model's own config.json") from None
    expected = {name: tuple(t.shape) for name, t in meta.state_dict().items()}
    for key, shape in safetensors_shapes(root).items():
        name = _model_key(key, expected, meta.base_model_prefix)
        if name is not None and expected[name] != shape:
            raise ConfigError(f"--model_name_or_path {path}: weight {key} has shape {list(shape)} but config.json "
                              f"makes it {list(expected[name])}: the config does not match the weights; restore the "
                              f"model's own config.json")
    check_memory(sum(p.numel() for p in meta.parameters()))


def safetensors_shapes(root: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from the safetensors headers (a few KB each), sharded or not; {} without safetensors."""
    import json
    import struct

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
                          f"({type(exc).__name__}: {_first_line(exc)}): the files are damaged; download or copy the "
                          f"model again") from None


def _model_key(key: str, expected: dict[str, Any], prefix: str) -> str | None:
    """The model's name for a checkpoint tensor: saved with or without the base model's prefix, or with
    the old LayerNorm names gamma/beta."""
    for candidate in (key, key.replace(".gamma", ".weight").replace(".beta", ".bias")):
        for name in (candidate, f"{prefix}.{candidate}", candidate.removeprefix(f"{prefix}.")):
            if name in expected:
                return name
    return None


def check_vocab(config: RunConfig, model_config: PretrainedConfig) -> None:
    """The embedding table has a row for every token id the tokenizer can produce."""
    from dslm import tokenizer as tok

    m = config.model
    source = m.tokenizer_name or m.model_name_or_path
    rows = getattr(model_config, "vocab_size", None)
    if source is None or rows is None:
        return  # the tokenizer is trained on the corpus, and the table is sized to it in build()
    n_tokens = len(tok.load(source, m.trust_remote_code))
    if m.model_name_or_path:
        if n_tokens > rows and not m.resize_token_embeddings:
            raise vocab_too_small(source, n_tokens, rows)
        return
    override = parse_overrides(m.config_overrides, model_config.model_type).get("vocab_size")
    if override is not None and override < n_tokens:
        raise override_too_small(override, n_tokens)


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
                          f"({type(exc).__name__}: {_first_line(exc)}): fix --config_overrides") from None
    empty = next(((name, p.shape) for name, p in meta.named_parameters() if p.numel() == 0), None)
    if empty:  # builds, then fails at the first forward pass (an index into an empty table)
        raise ConfigError(f"--config_overrides makes {empty[0]} empty (shape {list(empty[1])}): a size is 0; make it "
                          f"positive")
    check_memory(sum(p.numel() for p in meta.parameters()))


def meta_model(model_config: PretrainedConfig, objective: str) -> torch.nn.Module:
    """The model with shapes but no memory: free to build, for checks."""
    import copy

    with torch.device("meta"):
        return objectives.auto_class(objective).from_config(copy.deepcopy(model_config))


def check_memory(n_params: int) -> None:
    """The model is first built whole in fp32 on the CPU: refuse one that cannot fit there."""
    import psutil

    need, have = n_params * 4, psutil.virtual_memory().total
    if need > have:
        raise ConfigError(f"the model has {n_params / 1e9:.1f}B parameters ({need / 2**30:.0f} GiB in fp32), more than "
                          f"this machine's {have / 2**30:.0f} GiB of memory: make it smaller with --config_overrides")


def build(config: RunConfig, model_config: PretrainedConfig, objective: str,
          tokenizer: PreTrainedTokenizerBase) -> torch.nn.Module:
    cls = objectives.auto_class(objective)
    if objective == "clm" and model_config.model_type in objectives.families("mlm"):
        model_config.is_decoder = True  # BERT-like encoders act as decoders only when told
    if config.model.model_name_or_path:
        path = config.model.model_name_or_path
        try:
            model, info = cls.from_pretrained(path, config=model_config, output_loading_info=True,
                                              trust_remote_code=config.model.trust_remote_code)
        except (OSError, ValueError, RuntimeError) as exc:
            if "ignore_mismatched_sizes" in str(exc):
                raise ConfigError(f"--model_name_or_path {path}: the weights' shapes do not fit config.json: restore "
                                  f"the model's own config.json") from None
            raise ConfigError(f"--model_name_or_path {path}: cannot load the weights ({_first_line(exc)}); check "
                              f"that the directory holds a complete model") from None
        check_loaded(path, model, info)
        rows = model.get_input_embeddings().num_embeddings
        if len(tokenizer) > rows:
            if not config.model.resize_token_embeddings:  # ids past the table would fail mid-run
                raise vocab_too_small(config.model.tokenizer_name or path, len(tokenizer), rows)
            model.resize_token_embeddings(len(tokenizer))
        return model
    override = parse_overrides(config.model.config_overrides, model_config.model_type).get("vocab_size")
    if override is not None and override < len(tokenizer):
        raise override_too_small(override, len(tokenizer))
    model_config.vocab_size = max(override or 0, len(tokenizer))  # a larger table (e.g. a multiple of 64) is kept
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        token_id = getattr(tokenizer, name)
        if token_id is not None and hasattr(model_config, name):
            setattr(model_config, name, token_id)
    if model_config.model_type in PADDING_OFFSET_FAMILIES:
        model_config.pad_token_id = tokenizer.pad_token_id
    try:
        return cls.from_config(model_config, trust_remote_code=config.model.trust_remote_code)
    except (ValueError, TypeError) as exc:  # e.g. a hidden size the number of heads does not divide
        raise ConfigError(f"cannot build a {model_config.model_type} model from this config ({_first_line(exc)}): "
                          f"fix --config_overrides") from None


def _first_line(exc: BaseException) -> str:
    """The message's first line, with the next one when the first only introduces it ("...:")."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    return text[:240]
