"""Parameter groups for AdamW: weight decay on matrices only, like the HF Trainer."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

from dslm.engine import param_groups


@pytest.fixture(scope="module")
def bert() -> BertForMaskedLM:
    torch.manual_seed(0)
    return BertForMaskedLM(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=64, vocab_size=100))


def names(module: torch.nn.Module, params: list[torch.nn.Parameter]) -> set[str]:
    by_id = {id(p): n for n, p in module.named_parameters()}
    return {by_id[id(p)] for p in params}


def test_bert_groups(bert):
    decay, no_decay = param_groups(bert, weight_decay=0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert set(decay) == {"params", "weight_decay"}
    # Decay: the weights of every Linear and Embedding; none of the rest (biases, LayerNorm, the MLM bias).
    matrices = {f"{name}.weight" for name, m in bert.named_modules()
                if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))}
    matrices &= {n for n, _ in bert.named_parameters()}  # the decoder's weight is tied to the word embeddings
    assert names(bert, decay["params"]) == matrices
    assert names(bert, decay["params"]) == {
        "bert.embeddings.word_embeddings.weight", "bert.embeddings.position_embeddings.weight",
        "bert.embeddings.token_type_embeddings.weight",
        *(f"bert.encoder.layer.0.{m}.weight" for m in ("attention.self.query", "attention.self.key",
                                                       "attention.self.value", "attention.output.dense",
                                                       "intermediate.dense", "output.dense")),
        "cls.predictions.transform.dense.weight"}
    no = names(bert, no_decay["params"])
    assert "bert.embeddings.LayerNorm.weight" in no and "cls.predictions.bias" in no
    assert no == {n for n, _ in bert.named_parameters()} - matrices
    # every trainable parameter once
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(bert.parameters())) == 26


def test_frozen_parameters_are_left_out(bert):
    bert.bert.embeddings.requires_grad_(False)
    try:
        decay, no_decay = param_groups(bert, weight_decay=0.1)
    finally:
        bert.bert.embeddings.requires_grad_(True)
    got = names(bert, decay["params"]) | names(bert, no_decay["params"])
    assert got == {n for n, p in bert.named_parameters() if not n.startswith("bert.embeddings.")}
    assert len(got) == 21


class Toy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)
        self.gain = torch.nn.Parameter(torch.ones(4))  # 1-D, named neither bias nor norm
        self.final_norm = torch.nn.Linear(4, 4, bias=False)  # 2-D, but a normalization's by name
        self.RMSNorm_scale = torch.nn.Parameter(torch.ones(2, 4))
        self.table = torch.nn.Parameter(torch.ones(3, 4, 5))


def test_dimension_and_name_rules():
    toy = Toy()
    decay, no_decay = param_groups(toy, weight_decay=0.5)
    assert names(toy, decay["params"]) == {"proj.weight", "table"}
    assert names(toy, no_decay["params"]) == {"proj.bias", "gain", "final_norm.weight", "RMSNorm_scale"}


def test_everything_frozen_gives_empty_groups():
    toy = Toy().requires_grad_(False)
    assert param_groups(toy, 0.5) == [{"params": [], "weight_decay": 0.5}, {"params": [], "weight_decay": 0.0}]


def test_xlnet_attention_biases_get_no_weight_decay():
    from transformers import XLNetConfig, XLNetLMHeadModel

    xlnet = XLNetLMHeadModel(XLNetConfig(d_model=32, n_layer=1, n_head=2, d_inner=64, vocab_size=100))
    decay, _ = param_groups(xlnet, weight_decay=0.01)
    assert {n for n in names(xlnet, decay["params"]) if "bias" in n} == set()


def test_zero3_partitioned_parameters_are_grouped_by_their_real_shape():
    """Under ZeRO-3's partitioned build a parameter holds an empty tensor; its shape is ds_shape."""
    matrix, bias = torch.nn.Parameter(torch.empty(0)), torch.nn.Parameter(torch.empty(0))
    matrix.ds_shape, bias.ds_shape = torch.Size([4, 4]), torch.Size([4])
    module = torch.nn.Module()
    module.register_parameter("weight", matrix)
    module.register_parameter("other", bias)
    decay, no_decay = param_groups(module, 0.1)
    assert decay["params"] == [matrix] and no_decay["params"] == [bias]
