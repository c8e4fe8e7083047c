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

from dslm import documents
from dslm.config import ObjectiveConfig
from dslm.errors import ConfigError
from dslm.head import ELEMENTS, linear_cross_entropy

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
    With `document_end` (see dslm.documents), packed blocks also carry position ids that restart after it.
    """

    def __init__(self, objective: str, tokenizer: PreTrainedTokenizerBase, cfg: ObjectiveConfig,
                 max_length: int | None = None, document_end: int | None = None) -> None:
        self.objective = objective
        self.document_end = document_end
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
        documents_of = {}
        if self.document_end is not None:
            # Padding would join the last document (and may carry the end id itself): blocks only.
            if min(lengths) != width:
                raise ValueError("document position ids need packed blocks of one length, got lengths "
                                 f"{min(lengths)}..{max(lengths)}")
            # Before masking: MLM may write the end id over a token at random.
            documents_of = {"position_ids": documents.position_ids(input_ids, self.document_end)}
        if self.objective == "clm":
            # Padding may reuse EOS as its id, so padding is told apart by position, not by id.
            return {"input_ids": input_ids, "labels": input_ids.masked_fill(mask == 0, -100), "attention_mask": mask,
                    **documents_of}
        if self.objective == "plm":
            input_ids, perm_mask, target_mapping, labels = self.masker.torch_mask_tokens(input_ids)
            return {"input_ids": input_ids, "perm_mask": perm_mask, "target_mapping": target_mapping,
                    "labels": labels, "attention_mask": mask, **documents_of}
        input_ids, labels = self.masker.torch_mask_tokens(input_ids, special_tokens_mask=padded["special_tokens_mask"],
                                                           offset_mapping=padded.get("offset_mapping"))
        return {"input_ids": input_ids, "labels": labels, "attention_mask": mask, **documents_of}


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
    logits: torch.Tensor | None  # aligned with `labels`, one row per predicted position; None from the chunked head
    labels: torch.Tensor
    correct: torch.Tensor | None = None  # correct predictions, where there are no logits to take them from


class Forward:
    """batch -> the summed token losses, with logits and labels aligned for every objective.

    The loss is a sum so that the training step can divide by the label tokens of the whole step
    (every micro batch, every rank), not average per micro batch. For the MLM families above, a
    hook on the head's first module hands it the labelled positions only; the index is built on
    the CPU copy of the labels, so the device never has to sync. For CLM and PLM with `chunked`,
    the output projection computes the loss itself, a chunk at a time (dslm.head), whenever the
    full logits would be bigger than one chunk.
    """

    def __init__(self, model: torch.nn.Module, objective: str, sparse: bool = True, chunked: bool = False) -> None:
        self.objective = objective
        head = MLM_HEADS.get(model.config.model_type) if objective == "mlm" and sparse else None
        self.sparse = head is not None
        self.index: torch.Tensor | None = None  # set only during a sparse forward
        if self.sparse:
            model.get_submodule(head).register_forward_pre_hook(self._labelled_only)
        output = model.get_output_embeddings() if chunked and objective in ("clm", "plm") else None
        self.chunked = chunked and isinstance(output, torch.nn.Linear)
        self.pending: torch.Tensor | None = None  # the labels, while a chunked forward runs
        self.result: tuple[torch.Tensor, torch.Tensor] | None = None
        if self.chunked:
            self._chunk(output)

    def _chunk(self, output: torch.nn.Linear) -> None:
        """The projection's forward takes the loss over when labels are pending. Replaced, not hooked: a hook
        cannot skip the full matmul; and it runs inside the module's call, where ZeRO-3 has its weight gathered."""
        plain = output.forward

        def forward(hidden: torch.Tensor) -> torch.Tensor:
            if self.pending is None:
                return plain(hidden)
            if self.objective == "clm":  # position t predicts t + 1
                hidden = hidden[:, :-1]
            self.result = linear_cross_entropy(hidden, output.weight, output.bias, self.pending)
            return hidden.new_empty(*hidden.shape[:-1], 0)  # what the model returns as logits: unused

        output.forward = forward
        self.vocab = output.out_features

    def wants_chunks(self, labels: torch.Tensor) -> bool:
        return self.chunked and labels.numel() * self.vocab > ELEMENTS

    def _labelled_only(self, module: torch.nn.Module, args: tuple) -> tuple | None:
        if self.index is None:
            return None  # a plain call of the model: the whole sequence
        return (args[0].flatten(0, 1).index_select(0, self.index).unsqueeze(0), *args[1:])

    def __call__(self, model: Any, batch: dict[str, torch.Tensor], device: torch.device) -> Output:
        batch = dict(batch)
        labels = batch.pop("labels")  # the loss is computed here: the model's own would be a mean
        options: dict[str, Any] = {}
        if "position_ids" in batch:
            batch, options = self._documents(model, batch, device)
        inputs = {k: v.to(device, non_blocking=True) for k, v in batch.items()} | options
        if self.wants_chunks(labels):
            target = (labels[:, 1:] if self.objective == "clm" else labels).to(device, non_blocking=True)
            self.pending = target
            try:
                model(**inputs)
                loss_sum, correct = self.result
            finally:
                self.pending, self.result = None, None
            return Output(loss_sum, None, target, correct)
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
            if self.objective == "clm":  # position t predicts t + 1; the last position predicts nothing
                # (shifting the labels, not slicing the logits, spares a copy of the logits and its zero-filled
                # gradient)
                labels = torch.cat([labels[:, 1:], labels.new_full((len(labels), 1), -100)], dim=1)
        labels = labels.to(device, non_blocking=True)
        loss_sum = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="sum")
        return Output(loss_sum, logits, labels)

    def _documents(self, model: Any, batch: dict[str, torch.Tensor],
                   device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The batch and options that keep each packed document to itself (dslm.documents): the batch carries its
        position ids."""
        batch.pop("attention_mask", None)
        module = getattr(model, "module", model)  # a DeepSpeed engine's: its config, and the dtype it cast it to
        positions = batch["position_ids"]
        if self.objective == "mlm":
            # Built where the model runs: a [B, 1, T, T] mask is T times the batch's size.
            batch["attention_mask"] = documents.attention_mask_4d(
                positions.to(device, non_blocking=True), module.get_input_embeddings().weight.dtype,
                module.config._attn_implementation)
            batch["position_ids"] = positions + documents.position_offset(module.config)
            return batch, {}
        documents.check_decoder(module.config._attn_implementation, len(positions))
        # Decoders: with no 2D mask, transformers finds the documents from the positions restarting at 0, but only
        # without a cache, and config.use_cache (True as published) makes one even in training.
        return batch, {"use_cache": False}
