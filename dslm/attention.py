"""Attention with dropout that keeps no sequence x sequence tensor from the forward to the backward.

On CPUs, SDPA's flash kernel takes no dropout, so a model trained with attention dropout (GPT-2, BERT,
RoBERTa: 0.1) falls to SDPA's math path, which keeps the scores, the probabilities, the dropout mask and the
dropped probabilities of every layer for the backward: for GPT-2 124M at 2 x 1024 tokens, 100 MB each per
layer, most of the step's peak memory. Here the queries go a block of rows at a time, as FlashAttention's
do: the forward keeps the output, the log-sum-exp of each row and the dropout mask (one byte per kept entry),
and the backward recomputes each block's probabilities from them. Causal attention skips the keys after a
block's last query, so the blocks do about half the math path's matmul work.

The same function answers every other case (no dropout, evaluation, GPUs, position biases, ...) through
transformers' own SDPA attention, untouched.
"""

from __future__ import annotations

from typing import Any

import torch

NAME = "dslm_sdpa"
BLOCK = 128  # query rows per block: a block's scores for 12 heads x 1024 keys fit in the L2/L3 caches


class BlockAttention(torch.autograd.Function):
    """(q, k, v [B, H, T, D], additive-or-bool mask broadcastable to [B, H, T, S] | None, causal, dropout,
    scale) -> [B, H, T, D]."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                causal: bool, dropout: float, scale: float) -> torch.Tensor:
        out = torch.empty_like(q)
        keeps = []
        for start, end, keys in _blocks(q.shape[2], k.shape[2], causal):
            p = _probabilities(q[:, :, start:end], k[:, :, :keys], mask, start, end, causal, scale)
            # rand >= p is Bernoulli(1 - p), at half the cost of bernoulli_ on this CPU
            keep = torch.rand(p.shape, device=p.device) >= dropout
            keeps.append(keep)
            out[:, :, start:end] = p.mul_(keep).mul_(1 / (1 - dropout)).to(v.dtype) @ v[:, :, :keys]
        ctx.save_for_backward(q, k, v, out, mask, *keeps)
        ctx.causal, ctx.dropout, ctx.scale = causal, dropout, scale
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, out, mask, *keeps = ctx.saved_tensors
        grad = grad.contiguous()
        dq = torch.empty_like(q)
        dk = torch.zeros(k.shape, device=k.device, dtype=torch.float32)
        dv = torch.zeros(v.shape, device=v.device, dtype=torch.float32)
        # D_i = sum_j P_ij dP_ij = rowsum(dO * O): the softmax's backward term, dropout included
        d = (grad.float() * out.float()).sum(-1, keepdim=True)
        rescale = 1 / (1 - ctx.dropout)
        for (start, end, keys), keep in zip(_blocks(q.shape[2], k.shape[2], ctx.causal), keeps, strict=True):
            qb, gb = q[:, :, start:end], grad[:, :, start:end]
            p = _probabilities(qb, k[:, :, :keys], mask, start, end, ctx.causal, ctx.scale)
            dv[:, :, :keys] += (p * keep).mul_(rescale).transpose(-1, -2) @ gb.float()
            dp = (gb @ v[:, :, :keys].transpose(-1, -2)).float().mul_(keep).mul_(rescale)
            ds = dp.sub_(d[:, :, start:end]).mul_(p).mul_(ctx.scale)
            dq[:, :, start:end] = (ds.to(k.dtype) @ k[:, :, :keys]).to(q.dtype)
            dk[:, :, :keys] += ds.transpose(-1, -2) @ qb.float()
        return dq, dk.to(k.dtype), dv.to(v.dtype), None, None, None, None


def _blocks(queries: int, keys: int, causal: bool) -> list[tuple[int, int, int]]:
    """(first row, end row, keys seen) per block; causal rows see no key after their own position."""
    return [(s, min(s + BLOCK, queries), min(s + BLOCK, queries) + keys - queries if causal else keys)
            for s in range(0, queries, BLOCK)]


def _probabilities(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, start: int, end: int,
                   causal: bool, scale: float) -> torch.Tensor:
    """One block's softmax in fp32, computed again in the backward rather than kept. Masked scores are -inf:
    the softmax kernel is fast on them, where exp of a large negative number (denormal results) is ten times
    slower; a row with no key left (padding) gets zeros, as SDPA's kernels give it."""
    s = (q @ k.transpose(-1, -2)).float().mul_(scale)
    keys = k.shape[2]
    if mask is not None:
        m = mask[..., start:end, :keys] if mask.shape[-2] > 1 else mask[..., :keys]
        s = s.masked_fill_(~m, -torch.inf) if m.dtype == torch.bool else s.add_(m.float())
    if causal:
        offset = keys - q.shape[2] - start  # key j is seen by row i of the block when j <= i + start + offset
        later = torch.arange(keys, device=s.device)[None, :] > torch.arange(end - start, device=s.device)[:, None] \
            + start + offset
        s.masked_fill_(later, -torch.inf)
    p = torch.softmax(s, dim=-1)
    return p.nan_to_num_(0.0) if mask is not None else p


def attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
              is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention interface: the block attention where SDPA would take its math path for dropout
    on a CPU, SDPA itself everywhere else."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    special = any(kwargs.get(k) is not None for k in ("position_bias", "softcap", "sliding_window", "s_aux"))
    if dropout == 0.0 or query.device.type != "cpu" or special or kwargs.get("output_attentions"):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    # a causal model's own mask hides the later keys too: the blocks may skip them whatever the mask holds
    causal = bool(causal) and query.shape[2] > 1 and getattr(module, "is_causal", causal)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = BlockAttention.apply(query, key, value, attention_mask, causal, dropout, scale)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Make NAME an attention implementation transformers' models accept, with SDPA's masks."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def use(model: torch.nn.Module) -> bool:
    """Switch a model on SDPA (transformers' default) to the block attention; other choices are the user's."""
    if model.config._attn_implementation != "sdpa":
        return False
    register()
    model.set_attn_implementation(NAME)
    return True
