"""The model to train: resolved once from the flags (family, objective, config, overrides, tokenizer),
then built from that: a local or hub model to continue pretraining, or a config from scratch."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, PretrainedConfig, PreTrainedTokenizerBase
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

from dslm import model_checks, objectives
from dslm import tokenizer as tok
from dslm.config import RunConfig
from dslm.errors import ConfigError, first_line

DEFAULT_FAMILY = "bert"
# The built-in default model: a 2-layer BERT that learns the built-in corpus in minutes on 2 CPU cores.
SMALL_BERT = "hidden_size=128,num_hidden_layers=2,num_attention_heads=2,intermediate_size=512"
# Learned position tables that start counting after the padding index.
PADDING_OFFSET_FAMILIES = {"roberta", "xlm-roberta", "camembert", "roberta-prelayernorm", "data2vec-text"}
REMOTE_CODE_WARNING = ("warning: --trust_remote_code runs Python code shipped with the model and tokenizer "
                       "directories: use it only with models whose code you trust")


@dataclass
class ModelSpec:
    """Everything about the model that the flags and files decide, read once."""

    family: str
    objective: str
    config: PretrainedConfig
    overrides: dict[str, Any]  # parsed --config_overrides (from scratch)
    tokenizer: PreTrainedTokenizerBase | None  # None: trained on the corpus
    n_params: int | None = None  # from the meta model; None for a hub id
    warnings: list[str] = field(default_factory=list)  # for rank 0 to print


def resolve(config: RunConfig) -> ModelSpec:
    """The model spec, with every check that needs no data or devices."""
    m = config.model
    if m.model_name_or_path:
        model_config = load_pretrained_config(m.model_name_or_path, m.trust_remote_code)
        family, overrides = model_config.model_type, {}
    else:
        family = m.model_type or DEFAULT_FAMILY
        if family not in CONFIG_MAPPING_NAMES:
            raise ConfigError(f"unknown --model_type {family!r}: use one of bert, roberta, distilbert, gpt2, xlnet "
                              f"(or any transformers model type)")
    objective = m.objective or objectives.default_objective(family)
    objectives.check(objective, family)
    if objective == "plm" and config.data.max_seq_length % 2:
        raise ConfigError(f"--objective plm needs an even --max_seq_length (got {config.data.max_seq_length})")
    if not m.model_name_or_path:
        default = None if m.model_type else SMALL_BERT
        overrides = parse_overrides(",".join(filter(None, [default, m.config_overrides])), family)
        model_config = config_from_scratch(family, overrides)
    fit_positions(model_config, config, overrides)
    if m.model_name_or_path:
        n_params = model_checks.check_weights(m.model_name_or_path, model_config, objective)
    else:
        n_params = model_checks.check_buildable(model_config, objective)
    source = m.tokenizer_name or m.model_name_or_path
    tokenizer = tok.load(source, m.trust_remote_code) if source else None
    spec = ModelSpec(family, objective, model_config, overrides, tokenizer, n_params,
                     [REMOTE_CODE_WARNING] if m.trust_remote_code else [])
    check_vocab(spec, config)
    check_special_tokens(spec, source)
    return spec


def check_special_tokens(spec: ModelSpec, source: str | None) -> None:
    """MLM and PLM replace tokens with the mask token: a tokenizer without one cannot serve them."""
    if spec.tokenizer is None or spec.objective == "clm" or spec.tokenizer.mask_token_id is not None:
        return
    raise ConfigError(f"the tokenizer {source} has no mask token, which --objective {spec.objective} needs: pass "
                      f"--tokenizer_name DIR with one (e.g. the model's own), or train causally with --objective clm")


def load_pretrained_config(path: str, trust_remote_code: bool) -> PretrainedConfig:
    # A hub id is NAME or ORG/NAME; a path whose parent directory exists here is meant to be local
    # (asking the hub for it would only add retries and a wait on a machine without internet).
    parent = Path(path).parent
    looks_local = (Path(path).is_absolute() or path.startswith(".") or Path(path).exists() or path.count("/") > 1
                   or (parent != Path(".") and parent.is_dir()))
    if looks_local and not Path(path).is_dir():
        raise ConfigError(f"--model_name_or_path {path}: no such model directory; check the path")
    if looks_local:
        model_checks.check_config_file(path, trust_remote_code)
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        if not looks_local:  # "org/name" is a hub id and a relative path alike
            raise ConfigError(f"--model_name_or_path {path}: no such directory, and the Hugging Face hub did not "
                              f"provide it ({first_line(exc)}): check the path or the model id") from None
        raise ConfigError(f"--model_name_or_path {path}: cannot load a model config ({first_line(exc)}); "
                          f"give a directory with config.json") from None


def config_from_scratch(family: str, overrides: dict[str, Any]) -> PretrainedConfig:
    try:
        return AutoConfig.for_model(family, **overrides)
    except Exception as exc:  # transformers validates some fields as the config is made, with its own types
        raise ConfigError(f"--config_overrides: not a valid {family} config ({first_line(exc)}): "
                          f"fix the values") from None


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


def fit_positions(model_config: PretrainedConfig, config: RunConfig, overrides: dict[str, Any]) -> None:
    """Refuse a sequence longer than a pretrained model's positions; grow them for a model from scratch."""
    seq = config.data.max_seq_length
    limit = position_limit(model_config)
    if limit is None or seq <= limit:
        return
    names = {"max_position_embeddings", model_config.attribute_map.get("max_position_embeddings")}
    if config.model.model_name_or_path or names & set(overrides):
        raise ConfigError(f"--max_seq_length {seq} is above the model's position limit {limit}: "
                          f"use --max_seq_length {limit} or less")
    model_config.max_position_embeddings = seq + (limit != model_config.max_position_embeddings) * 2


def check_vocab(spec: ModelSpec, config: RunConfig) -> None:
    """The embedding table has a row for every token id the tokenizer can produce."""
    m = config.model
    rows = getattr(spec.config, "vocab_size", None)
    if spec.tokenizer is None or rows is None:
        return  # the tokenizer is trained on the corpus, and the table is sized to it in build()
    n_tokens = len(spec.tokenizer)
    if m.model_name_or_path:
        if n_tokens > rows and not m.resize_token_embeddings:
            raise model_checks.vocab_too_small(m.tokenizer_name or m.model_name_or_path, n_tokens, rows)
        return
    override = spec.overrides.get("vocab_size")
    if override is not None and override < n_tokens:
        raise model_checks.override_too_small(override, n_tokens)


@contextlib.contextmanager
def partitioned(ds: dict[str, Any]) -> Iterator[None]:
    """Under ZeRO-3, transformers builds and loads models inside this block partitioned over the ranks
    (DeepSpeed's zero.Init): no rank ever holds the whole model. Only inside: transformers keeps a weak
    reference to the config, and a model built later on one rank alone (the export) must not partition
    (a collective the other ranks are not in)."""
    if int(ds.get("zero_optimization", {}).get("stage", 0)) != 3:
        yield
        return
    from transformers.integrations import HfDeepSpeedConfig

    hf_ds_config = HfDeepSpeedConfig(ds)  # noqa: F841 - alive while the block runs
    try:
        yield
    finally:
        del hf_ds_config


def build(config: RunConfig, spec: ModelSpec, tokenizer: PreTrainedTokenizerBase) -> torch.nn.Module:
    """The model in fp32: loaded from its directory, or built from the config for `tokenizer`; partitioned
    inside a `partitioned` block."""
    cls = objectives.auto_class(spec.objective)
    model_config = spec.config
    if spec.objective == "clm" and spec.family in objectives.families("mlm"):
        model_config.is_decoder = True  # BERT-like encoders act as decoders only when told
    if config.model.model_name_or_path:
        path = config.model.model_name_or_path
        try:
            # In fp32 whatever the checkpoint's dtype: DeepSpeed casts to the precision its config asks for
            # (a bf16 checkpoint loaded as saved would train an fp32 run in bf16).
            model, info = cls.from_pretrained(path, config=model_config, output_loading_info=True,
                                              trust_remote_code=config.model.trust_remote_code,
                                              dtype=torch.float32)
        except (OSError, ValueError, RuntimeError) as exc:
            if "ignore_mismatched_sizes" in str(exc):
                raise ConfigError(f"--model_name_or_path {path}: the weights' shapes do not fit config.json: restore "
                                  f"the model's own config.json") from None
            raise ConfigError(f"--model_name_or_path {path}: cannot load the weights ({first_line(exc)}); check "
                              f"that the directory holds a complete model") from None
        model_checks.check_loaded(path, model, info)
        rows = model.get_input_embeddings().num_embeddings
        if len(tokenizer) > rows:
            if not config.model.resize_token_embeddings:  # ids past the table would fail mid-run
                raise model_checks.vocab_too_small(config.model.tokenizer_name or path, len(tokenizer), rows)
            model.resize_token_embeddings(len(tokenizer))
        return model
    override = spec.overrides.get("vocab_size")
    if override is not None and override < len(tokenizer):
        raise model_checks.override_too_small(override, len(tokenizer))
    model_config.vocab_size = max(override or 0, len(tokenizer))  # a larger table (e.g. a multiple of 64) is kept
    for name, token_id in tok.config_ids(tokenizer, model_config).items():
        setattr(model_config, name, token_id)
    if spec.family in PADDING_OFFSET_FAMILIES:
        model_config.pad_token_id = tokenizer.pad_token_id
    try:
        return cls.from_config(model_config, trust_remote_code=config.model.trust_remote_code)
    except (ValueError, TypeError) as exc:  # e.g. a hidden size the number of heads does not divide
        raise ConfigError(f"cannot build a {spec.family} model from this config ({first_line(exc)}): "
                          f"fix --config_overrides") from None
