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

from dslm.config import ObjectiveConfig
from dslm.errors import ConfigError

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


# Where each MLM family's prediction head begins. Fed only the positions that carry a label (15%),
# the head (a vocabulary-wide matmul and softmax per position: a third of a small BERT's FLOPs)
# costs a sixth as much, and the loss is the same mean over the same positions.
MLM_HEADS = {"bert": "cls", "roberta": "lm_head", "xlm-roberta": "lm_head", "camembert": "lm_head",
             "distilbert": "vocab_transform"}


class Forward:
    """batch -> (loss, logits, labels), with logits and labels aligned for every objective.

    For the MLM families above, a hook on the head's first module hands it the labelled positions
    only; the index is built on the CPU copy of the labels, so the device never has to sync.
    """

    def __init__(self, model: torch.nn.Module, objective: str, sparse: bool = True) -> None:
        head = MLM_HEADS.get(model.config.model_type) if objective == "mlm" and sparse else None
        self.sparse = head is not None
        self.index: torch.Tensor | None = None  # set only during a sparse forward
        if self.sparse:
            model.get_submodule(head).register_forward_pre_hook(self._labelled_only)

    def _labelled_only(self, module: torch.nn.Module, args: tuple) -> tuple | None:
        if self.index is None:
            return None  # a plain call of the model: the whole sequence
        return (args[0].flatten(0, 1).index_select(0, self.index).unsqueeze(0), *args[1:])

    def __call__(self, model: Any, batch: dict[str, torch.Tensor],
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self.sparse:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            out = model(**batch)
            return out.loss, out.logits, batch["labels"]
        batch = dict(batch)
        flat = batch.pop("labels").flatten()
        index = (flat != -100).nonzero().squeeze(1)
        labels = flat[index].to(device, non_blocking=True)
        self.index = index.to(device, non_blocking=True)
        try:
            logits = model(**{k: v.to(device, non_blocking=True) for k, v in batch.items()}).logits
        finally:
            self.index = None
        loss = torch.nn.functional.cross_entropy(logits[0].float(), labels)
        return loss, logits, labels
