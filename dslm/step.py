"""One optimizer step: its micro batches, their loss normalized by the label tokens of the whole step on
every rank, backward, and the guarded optimizer step.

The step's loss is the sum of every per-token loss of every micro batch on every rank, divided by
the number of label tokens in all of them: each token weighs the same however the batch is cut
into micro batches and ranks (MLM masks a varying number of tokens, padded lines and PLM targets
vary too). A mean per micro batch, averaged over accumulation steps and ranks, would weigh the
tokens of a short micro batch more and make the loss depend on the cut (the bug Hugging Face fixed
in its Trainer in 2024 with `num_items_in_batch`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dslm import dist
from dslm.nonfinite import Guard
from dslm.objectives import Forward, label_tokens


@dataclass
class StepResult:
    loss_sum: torch.Tensor  # this rank's summed token losses (on the device, not synced)
    label_tokens: int  # this rank's label tokens
    norm: torch.Tensor | None  # the gradient norm where dslm computed it (ZeRO-0), else None


def train_step(engine: Any, forward: Forward, module: torch.nn.Module, micro_batches: list[dict[str, torch.Tensor]],
               guard: Guard, want_norm: bool = False) -> StepResult:
    """Forward and backward each micro batch, then step; DeepSpeed divides each backward by the number of
    micro batches and averages gradients over the ranks, so each micro batch's summed loss is scaled
    by micro batches x ranks / label tokens of the whole step."""
    local = sum(label_tokens(b, forward.objective) for b in micro_batches)  # from the CPU labels
    counted = torch.tensor(float(local), dtype=torch.float64, device=dist.comm_device())
    dist.all_reduce(counted)  # one small collective per step; no host-device sync: the count stays on the device
    scale = (len(micro_batches) * dist.world_size() / counted.clamp(min=1)).to(engine.device, torch.float32)
    loss_sum = torch.zeros((), device=engine.device)
    norm = None
    for i, batch in enumerate(micro_batches):
        out = forward(engine, batch, engine.device)
        engine.backward(out.loss_sum * scale)
        norm = guard.step(module, i == len(micro_batches) - 1, want_norm)  # the boundary: the last one
        loss_sum += out.loss_sum.detach()
    return StepResult(loss_sum, local, norm)
