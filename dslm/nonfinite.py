"""Inf and NaN in the loss or the gradients: found on the step they happen, then skipped or stopped.

DeepSpeed already discards the update of a step whose gradients hold an inf or a NaN in every
setup but one (ZeRO 1-3 in any precision, and bf16/fp16 without ZeRO): `was_step_applied()` then
says so, at no extra cost, since DeepSpeed reads its overflow flag on the host itself. Without ZeRO
in fp32 it checks nothing and writes the NaN into the weights, so there dslm checks the gradients
before the step and drops them. fp16 is different: a skipped step is loss scaling at work, not an
error, until the scale cannot go lower.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from dslm import dist
from dslm.errors import NonFinite
from dslm.progress import Progress


def grad_norm(module: torch.nn.Module) -> torch.Tensor:
    """The global L2 norm of the gradients the module holds (ZeRO-0: averaged over ranks already)."""
    return torch.nn.utils.get_total_norm([p.grad for p in module.parameters() if p.grad is not None])


class Guard:
    """Per step: was the update applied, and if not, why; `--on_nan` decides what happens next."""

    def __init__(self, engine: Any, policy: str, fp16: bool, min_loss_scale: float, progress: Progress,
                 warn: Callable[[str], None], kept: Callable[[], str]) -> None:
        self.engine, self.policy, self.fp16, self.warn, self.kept = engine, policy, fp16, warn, kept
        self.min_loss_scale = min_loss_scale
        self.progress = progress  # counts the steps discarded for inf/NaN (bf16/fp32)
        self.zero = engine.zero_optimization_stage() > 0
        # The one setup where DeepSpeed applies whatever the gradients hold.
        self.checks_itself = not self.zero and not (engine.bfloat16_enabled() or engine.fp16_enabled())
        self.overflows = 0  # fp16 loss-scale overflows
        self.dropped = False

    def step(self, module: torch.nn.Module, boundary: bool, want_norm: bool = False) -> torch.Tensor | None:
        """`engine.step()`; at a boundary under ZeRO-0 fp32, first the gradient norm, and no update when
        it is not finite. Returns the gradient norm where dslm computed it: at a boundary under ZeRO-0
        when checking or asked (`want_norm`: DeepSpeed reports a norm only under ZeRO), else None."""
        norm = None
        if boundary and (self.checks_itself or (want_norm and not self.zero)):
            # Without ZeRO the averaged gradients are in the module until step().
            norm = grad_norm(module)
        if boundary and self.checks_itself:
            self.dropped = not torch.isfinite(norm).item()
        if not (boundary and self.dropped):
            self.engine.step()
            return norm
        for p in module.parameters():
            if p.grad is not None:
                p.grad.zero_()  # DeepSpeed clips before the optimizer runs: it needs finite numbers
        optimizer = self.engine.optimizer
        # The optimizer does nothing this once, and the flag DeepSpeed's own optimizers raise on overflow
        # makes the engine count the step as skipped and hold the LR schedule, as it does under ZeRO.
        optimizer.step, optimizer.overflow = (lambda *args, **kwargs: None), True
        try:
            self.engine.step()
        finally:
            del optimizer.step
            optimizer.overflow = False
        return norm

    def after_step(self, step: int, loss: torch.Tensor) -> bool:
        """True if the step's update was applied. Every rank reaches the same answer: the overflow
        flag DeepSpeed reads is all-reduced, and ZeRO-0 gradients are averaged before the check."""
        applied = self.engine.was_step_applied()
        self.dropped = False
        if applied:
            return True
        if self.fp16:
            self.overflows += 1
            scale = float(getattr(self.engine.optimizer, "loss_scale", math.inf))
            if scale > self.min_loss_scale:
                return False  # the scaler halves the scale and the next step tries again
            reason = (f"fp16 gradients overflow at the minimum loss scale {scale:g}: the model is diverging "
                      f"or fp16's range is too small for it (try --bf16)")
        else:
            reason = self._reason(loss)
        if self.policy == "stop":
            raise NonFinite(f"stopped at step {step}: {reason}; the update was not applied and no checkpoint is "
                            f"written ({self.kept()}). Lower --learning_rate, check the data near this step, or pass "
                            f"--on_nan skip to skip such steps")
        self.progress.skipped_steps += 1
        self.warn(f"step {step}: {reason}; update skipped ({self.progress.skipped_steps} so far, --on_nan skip)")
        return False

    def _reason(self, loss: torch.Tensor) -> str:
        """Which ranks saw a non-finite loss: a collective, but only on a bad step."""
        values = dist.all_gather_object(float(loss))
        bad = [(r, v) for r, v in enumerate(values) if not math.isfinite(v)]
        if not bad:
            return "inf/NaN gradients (the loss was finite on every rank)"
        where = ", ".join(f"rank {r} ({v})" for r, v in bad)
        return f"non-finite loss on {where}"

    def figures(self) -> dict[str, float]:
        out: dict[str, float] = {"train/skipped_steps": self.progress.skipped_steps}
        if self.fp16:
            out["train/overflow_steps"] = self.overflows
            out["train/loss_scale"] = float(getattr(self.engine.optimizer, "loss_scale", math.nan))
        return out


def weights_finite(module: torch.nn.Module) -> bool:
    """Every rank's weights (its ZeRO-3 partition) hold only finite numbers: checked before each save."""
    bad = False
    for p in module.parameters():
        tensor = p.ds_tensor if hasattr(p, "ds_tensor") else p
        if not torch.isfinite(tensor).all():
            bad = True
            break
    return not dist.any_true(bad)
