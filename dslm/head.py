"""The output head of causal and permuted LMs without the full logits.

A GPT-2 micro batch of 8 x 1024 tokens makes 8 x 1024 x 50,257 logits, upcast to fp32 for the loss: 1.6 GB,
and as much again for their gradient, kept from the forward to the backward. Here the last hidden states go
through the output projection and the cross-entropy a chunk of rows at a time, and each chunk's gradients
(with respect to the hidden states, the weight and the bias) are computed right away, in the forward, as
Liger's fused linear cross-entropy does: what the backward keeps is the size of the hidden states and of the
weight, never rows x vocabulary. The loss is the same sum over the same tokens, the gradients those of the
plain path (logits in the model's dtype, softmax in fp32).
"""

from __future__ import annotations

from typing import Any

import torch

ELEMENTS = 1 << 23  # logits per chunk (fp32: 32 MB): big enough for full-speed matmuls, small against the rest


def chunk_rows(vocab: int) -> int:
    return max(16, ELEMENTS // vocab)


class LinearCrossEntropy(torch.autograd.Function):
    """(hidden [N, H], weight [V, H], bias [V] | None, labels [N] with -100 ignored) -> (summed loss, correct
    predictions); the gradients of the loss are computed in the forward and only scaled in the backward."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                labels: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        grads = ctx.needs_input_grad[0] or ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        loss = torch.zeros((), device=hidden.device, dtype=torch.float32)
        correct = torch.zeros((), device=hidden.device, dtype=torch.int64)
        grad_hidden = torch.empty_like(hidden) if grads else None
        # Summed over chunks in fp32: one rounding at the end, as the plain path's single matmul
        grad_weight = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if grads else None
        grad_bias = torch.zeros(bias.shape, device=bias.device, dtype=torch.float32) if grads and bias is not None \
            else None
        for start in range(0, hidden.shape[0], rows):
            h, y = hidden[start:start + rows], labels[start:start + rows]
            logits = torch.nn.functional.linear(h, weight, bias).float()
            counted = y != -100
            target = y.clamp(min=0)
            lse = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, target[:, None]).squeeze(1)
            loss += ((lse - picked) * counted).sum()
            correct += ((logits.argmax(-1) == y) & counted).sum()
            if not grads:
                continue
            g = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
            g[torch.arange(len(y), device=y.device), target] -= 1
            g.mul_(counted[:, None])
            g = g.to(hidden.dtype)
            grad_hidden[start:start + rows] = g @ weight
            grad_weight.addmm_(g.t().float(), h.float())
            if grad_bias is not None:
                grad_bias += g.float().sum(0)
        ctx.save_for_backward(*(t for t in (grad_hidden, grad_weight, grad_bias) if t is not None))
        ctx.has_bias, ctx.dtypes = grad_bias is not None, (hidden.dtype, weight.dtype)
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, grad_correct: torch.Tensor) -> tuple:
        saved = ctx.saved_tensors
        grad_hidden, grad_weight = saved[0], saved[1]
        scale = grad_loss.float()
        grad_bias = (saved[2] * scale).to(ctx.dtypes[1]) if ctx.has_bias else None
        return ((grad_hidden.float() * scale).to(ctx.dtypes[0]), (grad_weight * scale).to(ctx.dtypes[1]), grad_bias,
                None, None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The summed token losses and the correct predictions of `hidden` [..., H] against `labels` [...]."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    return LinearCrossEntropy.apply(flat, weight, bias, labels.reshape(-1).to(hidden.device), chunk_rows(len(weight)))
