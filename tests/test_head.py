"""The chunked head: the loss, the correct predictions and every gradient of the plain path, without the
full logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dslm import head, objectives
from dslm.config import ObjectiveConfig


def plain(hidden, weight, bias, labels):
    logits = F.linear(hidden, weight, bias).float()
    loss = F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
    correct = ((logits.argmax(-1) == labels) & (labels != -100)).sum()
    return loss, correct


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_chunks_give_the_loss_and_gradients_of_the_plain_path(dtype, tol, with_bias):
    torch.manual_seed(0)
    n, h, v = 50, 16, 97
    inputs = [torch.randn(n, h, dtype=dtype), torch.randn(v, h, dtype=dtype) * 0.3,
              torch.randn(v, dtype=dtype) if with_bias else None]
    labels = torch.randint(0, v, (n,))
    labels[::7] = -100
    results = []
    for fn in (plain, lambda hd, w, b, y: head.LinearCrossEntropy.apply(hd, w, b, y, 8)):  # 7 chunks, one short
        leaves = [t.clone().requires_grad_() if t is not None else None for t in inputs]
        loss, correct = fn(*leaves, labels)
        (loss * 0.37).backward()  # the step's scale reaches every gradient
        results.append((loss.detach(), int(correct), [t.grad for t in leaves if t is not None]))
    (loss_a, correct_a, grads_a), (loss_b, correct_b, grads_b) = results
    assert correct_a == correct_b
    torch.testing.assert_close(loss_b, loss_a, rtol=tol, atol=tol)
    for a, b in zip(grads_a, grads_b, strict=True):
        assert b.dtype == a.dtype
        torch.testing.assert_close(b.float(), a.float(), rtol=tol, atol=tol)


def test_no_gradients_are_computed_without_grad():
    hidden, weight = torch.randn(10, 4), torch.randn(20, 4)
    with torch.no_grad():
        loss, correct = head.linear_cross_entropy(hidden, weight, None, torch.randint(0, 20, (10,)))
    assert not loss.requires_grad and correct.dtype == torch.int64


def tiny(family: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    sizes = {"gpt2": dict(n_embd=32, n_layer=2, n_head=2, vocab_size=300, bos_token_id=0, eos_token_id=0),
             "llama": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                           intermediate_size=64, vocab_size=300),
             "xlnet": dict(d_model=32, n_layer=2, n_head=2, d_inner=64, vocab_size=300)}[family]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(family, **sizes))
    model.config.use_cache = False
    return model.eval()  # no dropout: both paths see the same network


@pytest.mark.parametrize("family, objective", [("gpt2", "clm"), ("llama", "clm"), ("xlnet", "plm")])
def test_the_model_gets_the_same_loss_and_gradients_through_the_chunked_head(family, objective, monkeypatch):
    """GPT-2 ties the head to the embeddings: the chunked head's weight gradient must reach that one tensor."""
    from transformers import PreTrainedTokenizerFast

    model = tiny(family)
    tok = PreTrainedTokenizerFast(tokenizer_object=__import__("tokenizers").Tokenizer(
        __import__("tokenizers").models.WordLevel({f"w{i}": i for i in range(300)}, unk_token="w1")),
        unk_token="w1", pad_token="w2", mask_token="w3", eos_token="w0")
    collate = objectives.Collator(objective, tok, ObjectiveConfig(plm_probability=1 / 6, max_span_length=3))
    torch.manual_seed(1)
    batch = collate([{"input_ids": torch.randint(4, 300, (24,)).tolist()} for _ in range(3)])
    monkeypatch.setattr(objectives, "ELEMENTS", 64 * 300)  # 64 rows a chunk: several chunks
    runs = []
    for chunked in (False, True):
        model.zero_grad()
        forward = objectives.Forward(model, objective, chunked=chunked)
        assert forward.wants_chunks(batch["labels"]) == chunked
        out = forward(model, batch, torch.device("cpu"))
        out.loss_sum.backward()
        from dslm.evaluation import token_stats

        runs.append((out.loss_sum.detach(), token_stats(out), {n: p.grad.clone() for n, p in model.named_parameters()
                                                               if p.grad is not None}))
    (loss_a, stats_a, grads_a), (loss_b, stats_b, grads_b) = runs
    torch.testing.assert_close(loss_b, loss_a)
    torch.testing.assert_close(stats_b, stats_a)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-5, msg=name)
    # A plain call of the model (export, generation) still gets the logits
    assert model(input_ids=batch["input_ids"][:, :4]).logits.shape[-1] == 300
