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
        looks_local = Path(path).is_absolute() or path.startswith(".") or Path(path).exists()
        if looks_local and not Path(path).is_dir():
            raise ConfigError(f"--model_name_or_path {path}: no such model directory; check the path")
        try:
            return AutoConfig.from_pretrained(path, trust_remote_code=m.trust_remote_code)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--model_name_or_path {path}: cannot load a model config ({_first_line(exc)}); "
                              f"give a directory with config.json") from None
    return AutoConfig.for_model(family(config), **parse_overrides(_overrides(config), family(config)))


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
    model_config = load_config(config)
    fit_positions(model_config, config)
    if not config.model.model_name_or_path:
        check_buildable(model_config, objective)
    return fam, objective, model_config


def check_buildable(model_config: PretrainedConfig, objective: str) -> None:
    """Build the model on the meta device (no memory, no time) to refuse impossible configs early."""
    import copy

    try:
        with torch.device("meta"):
            objectives.auto_class(objective).from_config(copy.deepcopy(model_config))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"cannot build a {model_config.model_type} model from this config ({_first_line(exc)}): "
                          f"fix --config_overrides") from None


def build(config: RunConfig, model_config: PretrainedConfig, objective: str,
          tokenizer: PreTrainedTokenizerBase) -> torch.nn.Module:
    cls = objectives.auto_class(objective)
    if objective == "clm" and model_config.model_type in objectives.families("mlm"):
        model_config.is_decoder = True  # BERT-like encoders act as decoders only when told
    if config.model.model_name_or_path:
        try:
            model = cls.from_pretrained(config.model.model_name_or_path, config=model_config,
                                        trust_remote_code=config.model.trust_remote_code)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"--model_name_or_path {config.model.model_name_or_path}: cannot load the weights "
                              f"({_first_line(exc)}); check that the directory holds a complete model") from None
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
        return model
    model_config.vocab_size = len(tokenizer)
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
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
