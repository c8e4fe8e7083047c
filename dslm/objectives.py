"""Per objective: which model families can do it, which model class, and how batches are collated."""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    DataCollatorForLanguageModeling,
    DataCollatorForPermutationLanguageModeling,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

from dslm.config import ConfigError, ObjectiveConfig

TESTED = {"mlm": ("bert", "roberta", "distilbert"), "clm": ("gpt2",), "plm": ("xlnet",)}


def families(objective: str) -> set[str]:
    if objective == "mlm":
        return set(MODEL_FOR_MASKED_LM_MAPPING_NAMES)
    if objective == "clm":
        return set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    return {"xlnet"}


def default_objective(family: str) -> str:
    if family == "xlnet":
        return "plm"
    return "mlm" if family in MODEL_FOR_MASKED_LM_MAPPING_NAMES else "clm"


def check(objective: str, family: str) -> None:
    if family not in families(objective):
        able = [o for o in ("mlm", "clm", "plm") if family in families(o)]
        hint = f"; {family} can do {', '.join(able)}" if able else ""
        raise ConfigError(f"--objective {objective} needs a model type such as {', '.join(TESTED[objective])} "
                          f"(got {family}{hint}): change --objective or the model")


def auto_class(objective: str) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    # XLNetLMHeadModel is XLNet's causal-LM class; plm is the same head fed permutation masks.
    return AutoModelForMaskedLM if objective == "mlm" else AutoModelForCausalLM


PAD_MULTIPLE = 8  # tensor-core friendly, and even as XLNet's permutation masks require


class Collator:
    """Pad examples to a common length, then let the transformers collator mask them."""

    def __init__(self, objective: str, tokenizer: PreTrainedTokenizerBase, cfg: ObjectiveConfig) -> None:
        self.objective = objective
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if objective == "plm":
            self.inner = DataCollatorForPermutationLanguageModeling(
                tokenizer, plm_probability=cfg.plm_probability, max_span_length=cfg.max_span_length)
        else:
            wwm = cfg.whole_word_mask and objective == "mlm"
            # Whole-word masking cannot swap in random tokens: transformers would warn and use [MASK] only.
            replace = {"mask_replace_prob": 1.0, "random_replace_prob": 0.0} if wwm else {}
            self.inner = DataCollatorForLanguageModeling(
                tokenizer, mlm=objective == "mlm", mlm_probability=cfg.mlm_probability, whole_word_mask=wwm,
                **replace)

    def __call__(self, examples: list[dict[str, list]]) -> dict[str, torch.Tensor]:
        lengths = [len(e["input_ids"]) for e in examples]
        longest = max(lengths)
        # Packed blocks are all one length already; only line_by_line batches need padding.
        width = longest if min(lengths) == longest else -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE
        fill = {"input_ids": self.pad_id, "special_tokens_mask": 1, "offset_mapping": [0, 0]}
        padded = [{k: list(v) + [fill[k]] * (width - n) for k, v in e.items()}
                  for e, n in zip(examples, lengths, strict=True)]
        mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
        # The permutation collator reads input_ids only.
        batch = self.inner([e["input_ids"] for e in padded] if self.objective == "plm" else padded)
        batch.pop("attention_mask", None)
        batch.pop("token_type_ids", None)
        if self.objective == "clm":
            # Padding may reuse EOS as its id, so padding is told apart by position, not by id.
            batch["labels"] = batch["input_ids"].masked_fill(mask == 0, -100)
        batch["attention_mask"] = mask  # all ones when packed; models warn without it
        return batch
