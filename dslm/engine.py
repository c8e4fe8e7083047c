"""The DeepSpeed engine around the model: parameter groups, optimizer and LR schedule, compile."""

from __future__ import annotations

from typing import Any

import torch

from dslm.config import RunConfig
from dslm.schedule import Schedule


def param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Like the HF Trainer: no weight decay on biases (XLNet's 2-D attention biases too) and normalization
    weights."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            # a ZeRO-3 partitioned parameter holds an empty tensor: its real shape is ds_shape
            ndim = len(getattr(p, "ds_shape", p.shape))
            exempt = ndim < 2 or "norm" in name.lower() or "bias" in name.lower()
            (no_decay if exempt else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build(module: torch.nn.Module, ds: dict[str, Any], config: RunConfig, schedule: Schedule) -> Any:
    """The DeepSpeed engine; the JSON's optimizer and scheduler if it has them, else ours."""
    import deepspeed
    import transformers

    t = config.train
    if t.gradient_checkpointing:
        module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = None
    if "optimizer" not in ds:
        optimizer = torch.optim.AdamW(param_groups(module, t.weight_decay), lr=t.learning_rate,
                                      betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_epsilon)

    def scheduler(opt: torch.optim.Optimizer) -> Any:  # DeepSpeed calls this with the optimizer it built
        return transformers.get_scheduler(t.lr_scheduler_type, opt, num_warmup_steps=schedule.warmup_steps,
                                          num_training_steps=schedule.total_steps)

    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer,
                                           model_parameters=param_groups(module, t.weight_decay),
                                           lr_scheduler=None if "scheduler" in ds else scheduler, config=ds)
    if t.torch_compile:
        engine.compile()
    return engine
