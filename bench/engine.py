"""An engine, its batches and its forward, built by dslm's own functions from flags: for the benchmarks
that time something against dslm's loop or checkpoints on the very same setup."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from dslm import data, dist, ds_config, model, objectives, train
from dslm.config import RunConfig, all_fields, coerce


def parse_flags(argv: list[str]) -> dict[str, Any]:
    """`--name value` / `--switch` pairs into typed flag values, as the CLI would pass them."""
    fields, flags, i = all_fields(), {}, 0
    while i < len(argv):
        name = argv[i][2:]
        if fields[name].type in ("bool", bool) and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
            flags[name], i = True, i + 1
        else:
            flags[name], i = coerce(name, _literal(argv[i + 1]), fields[name].type), i + 2
    return flags


def _literal(raw: str) -> object:
    """A value as Fire would parse it: a number where it reads as one."""
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


@dataclass
class Built:
    engine: Any
    module: torch.nn.Module
    prepared: data.Prepared
    forward: objectives.Forward
    loader: DataLoader
    ds: dict[str, Any]


def build(config: RunConfig) -> Built:
    """What `train.run` builds before its loop (the process group must be up)."""
    t = config.train
    family, objective, model_config = model.resolve(config)
    prepared = data.prepare(config, family, objective)
    module = model.build(config, model_config, objective, prepared.tokenizer)
    world, rank = dist.world_size(), dist.rank()
    _, total, warmup = train.schedule(len(prepared.train), config, world)
    ds = ds_config.resolve(ds_config.load(t.deepspeed), config, world_size=world, total_steps=total,
                           warmup_steps=warmup, hidden_size=getattr(module.config, "hidden_size", None),
                           on_cpu=not torch.cuda.is_available(), source=t.deepspeed)
    forward = objectives.Forward(module, objective)
    engine = train.build_engine(module, ds, config, total, warmup)
    torch.manual_seed(t.seed + rank)  # as train.run seeds the masks
    sampler = data.ResumableSampler(len(prepared.train), world, rank, t.seed, t.per_device_train_batch_size)
    loader = DataLoader(prepared.train, batch_size=t.per_device_train_batch_size, sampler=sampler, drop_last=True,
                        collate_fn=objectives.Collator(objective, prepared.tokenizer, config.objective))
    return Built(engine, module, prepared, forward, loader, ds)
