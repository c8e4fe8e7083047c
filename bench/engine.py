"""An engine, its batches and its forward, built by dslm's own functions from flags: for the benchmarks
that time something against dslm's loop or checkpoints on the very same setup."""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any

from dslm import dist, train
from dslm.config import RunConfig, all_fields, coerce, field_types
from dslm.report import Reporter


def parse_flags(argv: list[str]) -> dict[str, Any]:
    """`--name value` / `--switch` pairs into typed flag values, as the CLI would pass them."""
    flags, i = {}, 0
    while i < len(argv):
        name = argv[i][2:]
        if name not in all_fields():
            raise SystemExit(f"unknown flag {argv[i]}")
        if field_types()[name] is bool and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
            flags[name], i = True, i + 1
        else:
            flags[name], i = coerce(name, _literal(argv[i + 1])), i + 2
    return flags


def _literal(raw: str) -> object:
    """A value as Fire would parse it: a number where it reads as one."""
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def build(config: RunConfig) -> tuple[train.Parts, dict[str, Any]]:
    """What `train.run` builds before its loop, by the same functions (the process group must be up):
    the parts and the resolved DeepSpeed config."""
    dist.fill_launcher_env(os.environ)
    reporter = Reporter(Path(config.train.output_dir), enabled=False)
    start = train.check(config, reporter)
    return train.build(config, start, reporter), start.ds
