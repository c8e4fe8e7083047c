"""The block attention: SDPA's results with dropout, without keeping sequence x sequence tensors."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import (
    AttentionInterface,
    BertConfig,
    BertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from dslm import attention, profile


def reference(q, k, v, mask, causal, dropout, scale, keeps):
    """SDPA's math path written out, with the block attention's dropout masks laid side by side."""
    s = (q.float() @ k.float().transpose(-1, -2)) * scale
    if mask is not None:
        s = s.masked_fill(~mask, -torch.inf) if mask.dtype == torch.bool else s + mask
    if causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).triu(1), -torch.inf)
    p = torch.softmax(s, -1).nan_to_num(0.0)
    keep = torch.zeros(p.shape, dtype=torch.bool)
    for (start, end, keys), block in zip(attention._blocks(q.shape[2], k.shape[2], causal), keeps, strict=True):
        keep[:, :, start:end, :keys] = block
    return (p * keep / (1 - dropout)) @ v.float()


def keep_masks(q, k, causal, dropout, seed):
    """The dropout masks the block attention draws after torch.manual_seed(seed), in its order."""
    torch.manual_seed(seed)
    return [torch.rand(q.shape[0], q.shape[1], end - start, keys) >= dropout
            for start, end, keys in attention._blocks(q.shape[2], k.shape[2], causal)]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("masked", [None, "bool", "float"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_output_and_gradients_are_those_of_attention_with_the_same_dropout(causal, masked, dtype, tol):
    torch.manual_seed(0)
    b, h, t, d, dropout = 2, 3, 300, 16, 0.1  # three blocks, the last one partial
    q, k, v = (torch.randn(b, h, t, d).to(dtype) for _ in range(3))
    mask = None
    if masked:
        pad = torch.ones(b, 1, 1, t, dtype=torch.bool)
        pad[0, ..., :40] = False  # left padding: with causal, rows 0-39 of sample 0 see no key at all
        pad[1, ..., -25:] = False
        mask = pad if masked == "bool" else torch.zeros(pad.shape).masked_fill(~pad, torch.finfo(torch.float32).min)
    scale = d ** -0.5
    grad = torch.randn(b, h, t, d).to(dtype)

    inputs = [x.clone().requires_grad_() for x in (q, k, v)]
    torch.manual_seed(7)
    out = attention.BlockAttention.apply(*inputs, mask, causal, dropout, scale)
    out.backward(grad)
    expected_inputs = [x.float().clone().requires_grad_() for x in (q, k, v)]
    expected = reference(*expected_inputs, mask, causal, dropout, scale, keep_masks(q, k, causal, dropout, 7))
    expected.backward(grad.float())

    assert out.dtype == dtype and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), expected, atol=tol, rtol=tol)
    for got, want in zip(inputs, expected_inputs, strict=True):
        assert got.grad.dtype == dtype
        torch.testing.assert_close(got.grad.float(), want.grad, atol=tol * 4, rtol=tol * 4)
    # about 10% of the entries each query saw were dropped
    kept = torch.cat([m.flatten() for m in keep_masks(q, k, causal, dropout, 7)]).float().mean().item()
    assert kept == pytest.approx(1 - dropout, abs=0.01)


def test_the_backward_keeps_no_sequence_by_sequence_tensor():
    """What autograd keeps for the backward of one GPT-2 layer's attention, counted by saved-tensor hooks: SDPA's
    math path keeps 4 tensors of B x H x T x T (fp32 scores and probabilities, the mask); the blocks keep q, k, v,
    the output and the causal half of a one-byte mask."""
    b, h, t, d = 2, 4, 512, 16
    q, k, v = (torch.randn(b, h, t, d, requires_grad=True) for _ in range(3))

    _, math = profile.kept_for_backward(lambda: torch.nn.functional.scaled_dot_product_attention(
        q, k, v, dropout_p=0.1, is_causal=True))
    _, blocks = profile.kept_for_backward(lambda: attention.BlockAttention.apply(q, k, v, None, True, 0.1, d ** -0.5))
    square = b * h * t * t
    assert math >= 2 * square * 4  # at least the scores' and the probabilities' fp32
    # q, k, v, out in fp32 and one byte per causal entry (blocks of 128: half the square plus the diagonal blocks)
    assert blocks <= 4 * b * h * t * d * 4 + square * (t / 2 + attention.BLOCK / 2) / t
    assert blocks < math / 10


class Counting:
    """Counts the calls that reach the block attention."""

    def __init__(self, monkeypatch):
        self.calls = 0
        real = attention.BlockAttention.apply

        def counted(*args):
            self.calls += 1
            return real(*args)

        monkeypatch.setattr(attention.BlockAttention, "apply", counted)


MODELS = {
    "gpt2": (GPT2LMHeadModel, GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100, bos_token_id=0,
                                         eos_token_id=0, attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0)),
    "bert": (BertForMaskedLM, BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=64, vocab_size=100, attention_probs_dropout_prob=0.0,
                                         hidden_dropout_prob=0.0)),
    # grouped-query attention: 4 query heads on 2 key/value heads
    "llama": (LlamaForCausalLM, LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                            num_key_value_heads=2, intermediate_size=64, vocab_size=100)),
}


@pytest.mark.parametrize("family", sorted(MODELS))
def test_a_model_switched_to_the_blocks_gives_sdpas_loss_and_gradients(family, monkeypatch):
    """Through transformers' models, with their own masks (left and right padding): dropout is 0 in these
    configs, so a negligible one (1e-9) sends the calls through the blocks, and SDPA's results are the reference."""
    cls, config = MODELS[family]
    torch.manual_seed(0)
    plain = cls(copy.deepcopy(config)).train()
    blocks = copy.deepcopy(plain)
    assert attention.use(blocks) and blocks.config._attn_implementation == attention.NAME
    counter = Counting(monkeypatch)
    AttentionInterface.register(attention.NAME, lambda *a, dropout=0.0, **kw: attention.attention(
        *a, dropout=1e-9, **kw))
    ids = torch.randint(0, 100, (3, 200))
    padding = torch.ones_like(ids)
    padding[0, :30], padding[1, -20:] = 0, 0
    try:
        for mask in (None, padding):
            losses = []
            for model in (plain, blocks):
                model.zero_grad()
                loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
                loss.backward()
                losses.append(loss.item())
            assert losses[1] == pytest.approx(losses[0], rel=1e-6)
            for a, b in zip(plain.parameters(), blocks.parameters(), strict=True):
                torch.testing.assert_close(b.grad, a.grad, atol=1e-6, rtol=1e-4)
    finally:
        attention.register()
    assert counter.calls == 2 * 2  # two layers, twice


def test_sdpa_answers_where_it_keeps_nothing_large(monkeypatch):
    """No dropout (evaluation, Llama-style configs) or no switch: SDPA's own kernels, never the blocks."""
    cls, config = MODELS["gpt2"]
    config = copy.deepcopy(config)
    config.attn_pdrop = 0.1
    model = cls(config)
    assert attention.use(model)
    counter = Counting(monkeypatch)
    ids = torch.randint(0, 100, (2, 64))
    with torch.no_grad():
        model.eval()(input_ids=ids)
    assert counter.calls == 0
    model.train()(input_ids=ids, labels=ids).loss.backward()
    assert counter.calls == 2
    eager = cls._from_config(config, attn_implementation="eager")
    assert not attention.use(eager) and eager.config._attn_implementation == "eager"


def test_the_switch_is_not_written_with_the_model(tmp_path):
    """A saved model loads anywhere: its config.json names no attention implementation of dslm's."""
    cls, config = MODELS["gpt2"]
    model = cls(copy.deepcopy(config))
    attention.use(model)
    model.save_pretrained(tmp_path)
    assert attention.NAME not in (tmp_path / "config.json").read_text()
    assert cls.from_pretrained(tmp_path).config._attn_implementation == "sdpa"

