"""Per objective: which model families can do it, which model class, and how batches are collated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
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

TESTED = {"mlm": ("bert", "roberta", "distilbert", "modernbert"), "clm": ("gpt2", "llama", "qwen2", "mistral"),
          "plm": ("xlnet",)}


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


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id padding carries. GPT-2, Llama and Mistral as published have no pad token: any id the embedding
    has a row for serves, since padding is masked out of attention and labels by position, and taking one
    of theirs does not grow the vocabulary (or change the tokenizer that is saved with the model)."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id,
                     tokenizer.bos_token_id):
        if token_id is not None:
            return token_id
    return 0


class Collator:
    """Pad examples to a common length, then mask them for the objective (transformers' masking).

    The padding is dslm's own (right side, to a multiple of 8, even for XLNet) with `pad_id`, so a
    tokenizer without a pad token works, and the masking is called on the padded tensors directly:
    transformers' collators would pad through the tokenizer again and refuse one without a pad token.
    """

    def __init__(self, objective: str, tokenizer: PreTrainedTokenizerBase, cfg: ObjectiveConfig,
                 max_length: int | None = None) -> None:
        self.objective = objective
        self.pad_id = pad_id(tokenizer)
        self.max_length = max_length  # padding never goes past it: the model's positions may end there
        self.masker: Any = None
        if objective == "plm":
            self.masker = DataCollatorForPermutationLanguageModeling(
                tokenizer, plm_probability=cfg.plm_probability, max_span_length=cfg.max_span_length)
        elif objective == "mlm":
            # Whole-word masking cannot swap in random tokens: transformers would warn and use [MASK] only.
            wwm = cfg.whole_word_mask
            replace = {"mask_replace_prob": 1.0, "random_replace_prob": 0.0} if wwm else {}
            self.masker = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=cfg.mlm_probability,
                                                          whole_word_mask=wwm, **replace)

    def width(self, lengths: list[int]) -> int:
        longest = max(lengths)
        if min(lengths) == longest and (self.objective != "plm" or longest % 2 == 0):
            return longest  # packed blocks, all one length already
        width = -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE
        return max(longest + longest % 2, min(width, self.max_length)) if self.max_length else width

    def __call__(self, examples: list[dict[str, list]]) -> dict[str, torch.Tensor]:
        lengths = [len(e["input_ids"]) for e in examples]
        width = self.width(lengths)
        fill = {"input_ids": self.pad_id, "special_tokens_mask": 1, "offset_mapping": [0, 0]}
        padded = {k: torch.tensor([list(e[k]) + [fill[k]] * (width - n)
                                   for e, n in zip(examples, lengths, strict=True)]) for k in examples[0]}
        mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
        input_ids = padded["input_ids"]
        if self.objective == "clm":
            # Padding may reuse EOS as its id, so padding is told apart by position, not by id.
            return {"input_ids": input_ids, "labels": input_ids.masked_fill(mask == 0, -100), "attention_mask": mask}
        if self.objective == "plm":
            input_ids, perm_mask, target_mapping, labels = self.masker.torch_mask_tokens(input_ids)
            return {"input_ids": input_ids, "perm_mask": perm_mask, "target_mapping": target_mapping,
                    "labels": labels, "attention_mask": mask}
        input_ids, labels = self.masker.torch_mask_tokens(input_ids, special_tokens_mask=padded["special_tokens_mask"],
                                                           offset_mapping=padded.get("offset_mapping"))
        return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


# Where each MLM family's prediction head begins. Fed only the positions that carry a label (15%),
# the head (a vocabulary-wide matmul and softmax per position: a third of a small BERT's FLOPs)
# costs a sixth as much, and the loss is the same sum over the same positions.
MLM_HEADS = {"bert": "cls", "roberta": "lm_head", "xlm-roberta": "lm_head", "camembert": "lm_head",
             "distilbert": "vocab_transform"}


def label_tokens(batch: dict[str, torch.Tensor], objective: str) -> int:
    """How many token losses a batch contributes: read from the CPU copy of its labels, before any device."""
    labels = batch["labels"][:, 1:] if objective == "clm" else batch["labels"]  # clm: position t predicts t + 1
    return int((labels != -100).sum())


@dataclass
class Output:
    loss_sum: torch.Tensor  # fp32: the sum of the batch's per-token losses, not their mean
    logits: torch.Tensor  # aligned with `labels`, one row per predicted position
    labels: torch.Tensor


class Forward:
    """batch -> the summed token losses, with logits and labels aligned for every objective.

    The loss is a sum so that the training step can divide by the label tokens of the whole step
    (every micro batch, every rank), not average per micro batch. For the MLM families above, a
    hook on the head's first module hands it the labelled positions only; the index is built on
    the CPU copy of the labels, so the device never has to sync.
    """

    def __init__(self, model: torch.nn.Module, objective: str, sparse: bool = True) -> None:
        self.objective = objective
        head = MLM_HEADS.get(model.config.model_type) if objective == "mlm" and sparse else None
        self.sparse = head is not None
        self.index: torch.Tensor | None = None  # set only during a sparse forward
        if self.sparse:
            model.get_submodule(head).register_forward_pre_hook(self._labelled_only)

    def _labelled_only(self, module: torch.nn.Module, args: tuple) -> tuple | None:
        if self.index is None:
            return None  # a plain call of the model: the whole sequence
        return (args[0].flatten(0, 1).index_select(0, self.index).unsqueeze(0), *args[1:])

    def __call__(self, model: Any, batch: dict[str, torch.Tensor], device: torch.device) -> Output:
        batch = dict(batch)
        labels = batch.pop("labels")  # the loss is computed here: the model's own would be a mean
        inputs = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        if self.sparse:
            flat = labels.flatten()
            index = (flat != -100).nonzero().squeeze(1)
            labels = flat[index].unsqueeze(0)
            self.index = index.to(device, non_blocking=True)
            try:
                logits = model(**inputs).logits
            finally:
                self.index = None
        else:
            logits = model(**inputs).logits
            if self.objective == "clm":
                logits, labels = logits[:, :-1], labels[:, 1:]
        labels = labels.to(device, non_blocking=True)
        loss_sum = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="sum")
        return Output(loss_sum, logits, labels)
