"""GPT-2's GELU in one kernel: the same results, less kept for the backward."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from dslm import activations, profile

CONFIG = GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100, bos_token_id=0, eos_token_id=0,
                    attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0)


def test_gpt2s_gelu_in_one_kernel_gives_the_same_loss_and_gradients_and_keeps_less():
    torch.manual_seed(0)
    plain = GPT2LMHeadModel(copy.deepcopy(CONFIG)).train()
    fused = copy.deepcopy(plain)
    assert activations.fuse(fused) == 2 and activations.fuse(fused) == 0
    ids = torch.randint(0, 100, (2, 64))
    saved = []
    for model in (plain, fused):
        loss, total = profile.kept_for_backward(lambda m=model: m(input_ids=ids, labels=ids).loss)
        loss.backward()
        saved.append((loss.item(), total))
    assert saved[1][0] == pytest.approx(saved[0][0], rel=1e-6)
    for a, b in zip(plain.parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-6, rtol=1e-4)
    mlp_hidden = 2 * 64 * 4 * 32 * 4  # bytes of one MLP hidden activation
    assert saved[0][1] - saved[1][1] >= 2 * 2 * mlp_hidden  # at least two such tensors fewer per layer
    assert '"activation_function": "gelu_new"' in fused.config.to_json_string()
