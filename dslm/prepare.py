"""`dslm prepare`: build the tokenizer and the tokenized cache ahead of a (multi-node) launch."""

from __future__ import annotations

from dslm import data, model
from dslm.config import RunConfig


def run(config: RunConfig) -> data.Prepared:
    family, objective, _ = model.resolve(config)
    prepared = data.prepare(config, family, objective)
    n_val = len(prepared.validation) if prepared.validation is not None else 0
    n_train = "streamed" if config.data.streaming else len(prepared.train)
    print(f"prepared {n_train} train / {n_val} eval examples for {objective} ({family}) "
          f"in {config.cache_dir} (fingerprint {prepared.fingerprint}); `dslm train` with the same flags reuses it")
    return prepared
