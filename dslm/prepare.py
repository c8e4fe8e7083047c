"""`dslm prepare`: build the tokenizer and the tokenized cache ahead of a (multi-node) launch."""

from __future__ import annotations

import sys

from dslm import dist, model
from dslm.config import RunConfig
from dslm.data import cache


def run(config: RunConfig) -> cache.Prepared:
    spec = model.resolve(config)
    if dist.is_main():
        for warning in spec.warnings:
            print(warning, file=sys.stderr, flush=True)
    prepared = cache.prepare(config, spec.family, spec.objective, spec.tokenizer)
    n_val = len(prepared.validation) if prepared.validation is not None else 0
    n_train = "streamed" if config.data.streaming else len(prepared.train)
    print(f"prepared {n_train} train / {n_val} eval examples for {spec.objective} ({spec.family}) "
          f"in {config.cache_dir} (fingerprint {prepared.fingerprint}); `dslm train` with the same flags reuses it")
    return prepared
