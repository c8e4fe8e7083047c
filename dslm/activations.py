"""GPT-2's GELU in one kernel.

GPT-2 (and GPT-Neo, GPT-J, CodeGen) configs name `gelu_new`, which transformers computes in Python as eight
elementwise operations; autograd keeps the inputs of most of them, each the size of the MLP's hidden layer
(4 x the model width): for GPT-2 124M at 2 x 1024 tokens, about 150 MB per layer more than the activation's
input alone. PyTorch's `gelu(approximate="tanh")` is the same function in one kernel that keeps only its
input (transformers' own `gelu_pytorch_tanh`, equal up to float rounding). The config is left as it is, so a
saved model still names `gelu_new`.
"""

from __future__ import annotations

import torch


def fuse(model: torch.nn.Module) -> int:
    """Replace each `gelu_new` module of the model by the one-kernel GELU; the number replaced."""
    from transformers.activations import GELUTanh, NewGELUActivation

    replaced = 0
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is NewGELUActivation:
                setattr(parent, name, GELUTanh())
                replaced += 1
    return replaced
