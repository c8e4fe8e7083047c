"""Document-aware packing: where each document of a packed block ends, and the positions and attention that keep
every document to itself (as Megatron's --reset-position-ids and --reset-attention-mask)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from dslm import attention
from dslm.errors import ConfigError

# Only the families whose packed losses tests/test_documents.py shows equal to each document's own: decoders get
# their documents from transformers itself (position ids restarting at 0 and no 2D mask), encoders take a prepared
# 4D mask as it is. Another family joins once that test passes for it.
FAMILIES = {"clm": ("gpt2", "llama", "mistral", "qwen2"), "mlm": ("bert", "roberta", "distilbert")}

# These embed position p at row p + pad_token_id + 1 and take explicit position ids as they are.
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert")


def check(objective: str, family: str) -> None:
    """(--line_by_line, which packs nothing, is refused with the flags: RunConfig.validate.)"""
    if family not in FAMILIES.get(objective, ()):
        able = "; ".join(f"{o}: {', '.join(names)}" for o, names in FAMILIES.items())
        raise ConfigError(f"--reset_attention_mask needs a model family whose attention transformers can confine "
                          f"to a document: {able}; got {family} ({objective}): drop the flag or change the model")


def end_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id that ends each packed document as dslm's Encoder writes it."""
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    # The same test as Encoder.add_eos: where it holds, the Encoder appends this EOS to every document.
    if eos is not None and not ids.count(eos):
        return eos
    # Otherwise the tokenizer closes each text itself (BERT's [SEP], RoBERTa's </s>).
    if ids and ids[-1] in tokenizer.all_special_ids:
        return ids[-1]
    raise ConfigError("--reset_attention_mask needs a token that ends each document: this tokenizer has no EOS and "
                      "ends a text with no special token: drop the flag or use a tokenizer with an EOS")


def position_ids(input_ids: torch.Tensor, end: int) -> torch.Tensor:
    """[B, T] positions that restart at 0 on the token after each `end` token (which stays in its document)."""
    steps = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    starts = torch.zeros_like(steps)
    starts[:, 1:] = torch.where(input_ids[:, :-1] == end, steps[:, 1:], 0)
    # The latest start at or before each token is where its document began.
    return steps - starts.cummax(dim=1).values


def check_decoder(impl: str, batch_size: int) -> None:
    """Refuse what would leave a decoder's documents unconfined without a word."""
    # transformers' flash-attention path finds documents in the position ids of a batch of one row only
    # (modeling_flash_attention_utils._is_packed_sequence); with more rows it attends across the whole row.
    if "flash" in impl and batch_size > 1:
        raise ConfigError(f"--reset_attention_mask with {impl} confines documents only in batches of one block, "
                          f"got {batch_size}: use batch size 1, the sdpa or eager attention, or drop the flag")


def attention_mask_4d(position_ids: torch.Tensor, dtype: torch.dtype, impl: str) -> torch.Tensor:
    """[B, 1, T, T]: each token attends to its own document only, in both directions (for encoders).

    transformers returns a 4D mask as it is given, so it must already be in the form the attention function uses:
    sdpa takes a bool mask (True attends), eager adds the mask to the scores.
    """
    document = (position_ids == 0).cumsum(dim=1)
    same = (document[:, :, None] == document[:, None, :]).unsqueeze(1)
    if impl in ("sdpa", attention.NAME):
        return same
    if impl == "eager":
        return torch.zeros(same.shape, dtype=dtype, device=same.device).masked_fill(~same, torch.finfo(dtype).min)
    raise ConfigError(f"--reset_attention_mask for a masked LM needs the sdpa or eager attention implementation, "
                      f"got {impl}: drop the flag or load the model with sdpa or eager")


def position_offset(model_config: Any) -> int:
    """What to add to positions counted from 0 so that the model embeds them as its own."""
    if getattr(model_config, "model_type", None) in _OFFSET_POSITIONS:
        return model_config.pad_token_id + 1
    return 0
