"""`dslm prepare`: build the tokenizer and the tokenized cache ahead of a (multi-node) launch, whole or
one slice of it per machine (--num_shards N --shard_index I)."""

from __future__ import annotations

import sys

from dslm import dist, model
from dslm.config import RunConfig
from dslm.data import cache


def run(config: RunConfig) -> None:
    spec = model.resolve(config)
    if dist.is_main():
        for warning in spec.warnings:
            print(warning, file=sys.stderr, flush=True)
    d = config.data
    if d.shard_index is not None:
        for record in cache.prepare_slices(config, spec.family, spec.objective, spec.tokenizer):
            counts = ", ".join(f"{split} {record['units'][split]:,} units / {record['tokens'][split]:,} tokens"
                               for split in record["units"])
            print(f"prepared slice {d.shard_index} of {d.num_shards} ({counts}) in {record['path']}")
        print(f"once every slice is there, `dslm train` with the same flags and --num_shards {d.num_shards} reads "
              f"them all")
        return
    prepared = cache.prepare_any(config, spec.family, spec.objective, spec.tokenizer)
    n_val = sum(len(v) for v in prepared.eval_sets().values())
    n_train = "streamed" if d.streaming else len(prepared.train)
    print(f"prepared {n_train} train / {n_val} eval examples for {spec.objective} ({spec.family}) "
          f"in {config.cache_dir} (fingerprint {prepared.fingerprint}); `dslm train` with the same flags reuses it")
