"""Resolving the model from the flags: family, objective, typed overrides, positions; no data, no weights."""

from __future__ import annotations

import pytest
import transformers

from dslm import model
from dslm.config import RunConfig
from dslm.errors import ConfigError

GPT2 = "n_embd=32,n_layer=2,n_head=2"
BERT = "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64"


def flags(tmp_path, **kw) -> RunConfig:
    return RunConfig.from_flags(output_dir=str(tmp_path / "out"), **kw)


def test_resolve_gpt2_from_scratch(tmp_path):
    spec = model.resolve(flags(tmp_path, model_type="gpt2", config_overrides=GPT2))
    assert (spec.family, spec.objective, spec.tokenizer, spec.warnings) == ("gpt2", "clm", None, [])
    assert spec.overrides == {"n_embd": 32, "n_layer": 2, "n_head": 2}
    assert [type(v) for v in spec.overrides.values()] == [int, int, int]
    assert (spec.config.model_type, spec.config.n_embd, spec.config.n_layer, spec.config.n_head) == ("gpt2", 32, 2, 2)
    assert spec.config.n_positions == 1024  # untouched: 128 tokens fit


def test_default_is_the_small_bert(tmp_path):
    spec = model.resolve(flags(tmp_path))
    assert (spec.family, spec.objective, spec.tokenizer) == ("bert", "mlm", None)
    assert spec.overrides == {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                              "intermediate_size": 512}
    assert (spec.config.hidden_size, spec.config.num_hidden_layers, spec.config.intermediate_size) == (128, 2, 512)


def test_overrides_apply_on_top_of_the_small_bert(tmp_path):
    spec = model.resolve(flags(tmp_path, config_overrides="num_hidden_layers=1,hidden_dropout_prob=0.0"))
    assert spec.overrides == {"hidden_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2,
                              "intermediate_size": 512, "hidden_dropout_prob": 0.0}
    assert spec.config.num_hidden_layers == 1
    # with --model_type the small BERT's sizes do not apply
    assert model.resolve(flags(tmp_path, model_type="bert")).overrides == {}


def test_objective_from_family_and_flag(tmp_path):
    assert model.resolve(flags(tmp_path, model_type="bert", config_overrides=BERT, objective="clm")).objective == "clm"
    xlnet = model.resolve(flags(tmp_path, model_type="xlnet", config_overrides="d_model=32,n_layer=2,n_head=2,"
                                                                                  "d_inner=64"))
    assert (xlnet.family, xlnet.objective) == ("xlnet", "plm")


def test_parse_overrides_types():
    assert model.parse_overrides(None, "gpt2") == {}
    assert model.parse_overrides("", "gpt2") == {}
    got = model.parse_overrides("n_layer=3,resid_pdrop=0.5,scale_attn_weights=FALSE,n_inner=64,activation_function="
                                "relu", "gpt2")
    assert got == {"n_layer": 3, "resid_pdrop": 0.5, "scale_attn_weights": False, "n_inner": 64,
                   "activation_function": "relu"}
    assert [type(v) for v in got.values()] == [int, float, bool, int, str]
    # a field whose default is None: the value's own type
    assert model.parse_overrides("n_inner=none", "gpt2") == {"n_inner": None}
    assert model.parse_overrides("n_inner=1.5", "gpt2") == {"n_inner": 1.5}


@pytest.mark.parametrize(("overrides", "message"), [
    ("n_layer", "--config_overrides: 'n_layer' is not key=value; write e.g. \"num_hidden_layers=4,hidden_size=256\""),
    ("=3", "--config_overrides: '=3' is not key=value; write e.g. \"num_hidden_layers=4,hidden_size=256\""),
    ("n_layer=2,", "--config_overrides: '' is not key=value; write e.g. \"num_hidden_layers=4,hidden_size=256\""),
    ("n_layers=2", "--config_overrides: gpt2 configs have no field 'n_layers'; check the name"),
    ("n_layer=two", "--config_overrides: n_layer='two' is not a valid int"),
    ("n_layer=2.5", "--config_overrides: n_layer='2.5' is not a valid int"),
    ("resid_pdrop=lots", "--config_overrides: resid_pdrop='lots' is not a valid float"),
    ("scale_attn_weights=yes", "--config_overrides: scale_attn_weights='yes' is not a valid bool"),
    ("n_layer=-1", "--config_overrides: n_layer=-1 must not be negative"),
])
def test_parse_overrides_errors(overrides, message):
    with pytest.raises(ConfigError) as err:
        model.parse_overrides(overrides, "gpt2")
    assert str(err.value) == message


def test_fit_positions_grows_a_model_from_scratch(tmp_path):
    bert = transformers.AutoConfig.for_model("bert")
    model.fit_positions(bert, flags(tmp_path, max_seq_length=1024), {})
    assert bert.max_position_embeddings == 1024
    roberta = transformers.AutoConfig.for_model("roberta")
    assert model.position_limit(roberta) == roberta.max_position_embeddings - 2
    model.fit_positions(roberta, flags(tmp_path, max_seq_length=1024), {})
    assert roberta.max_position_embeddings == 1026  # positions start after the padding index
    assert model.position_limit(roberta) == 1024
    gpt2 = transformers.AutoConfig.for_model("gpt2")
    model.fit_positions(gpt2, flags(tmp_path, max_seq_length=2048), {})
    assert gpt2.n_positions == 2048
    small = transformers.AutoConfig.for_model("bert")
    model.fit_positions(small, flags(tmp_path, max_seq_length=64), {})
    assert small.max_position_embeddings == 512  # never shrunk


def test_fit_positions_through_resolve(tmp_path):
    spec = model.resolve(flags(tmp_path, model_type="roberta", config_overrides=BERT, max_seq_length=1024))
    assert spec.config.max_position_embeddings == 1026


@pytest.mark.parametrize(("family", "overrides", "limit"), [
    ("bert", "max_position_embeddings=64", 64),
    ("roberta", "max_position_embeddings=66", 64),
    ("gpt2", "n_positions=64", 64),  # the family's own name for the field
])
def test_fit_positions_refuses_an_explicit_limit(tmp_path, family, overrides, limit):
    config = flags(tmp_path, model_type=family, max_seq_length=128)
    model_config = transformers.AutoConfig.for_model(family, **model.parse_overrides(overrides, family))
    with pytest.raises(ConfigError) as err:
        model.fit_positions(model_config, config, model.parse_overrides(overrides, family))
    assert str(err.value) == (f"--max_seq_length 128 is above the model's position limit {limit}: use "
                              f"--max_seq_length {limit} or less")


def test_xlnet_has_no_position_limit():
    assert model.position_limit(transformers.AutoConfig.for_model("xlnet")) is None


def test_plm_needs_an_even_length(tmp_path):
    with pytest.raises(ConfigError) as err:
        model.resolve(flags(tmp_path, model_type="xlnet", max_seq_length=127))
    assert str(err.value) == "--objective plm needs an even --max_seq_length (got 127)"


def test_unknown_model_type(tmp_path):
    with pytest.raises(ConfigError) as err:
        model.resolve(flags(tmp_path, model_type="bret"))
    assert str(err.value) == ("unknown --model_type 'bret': use one of bert, roberta, distilbert, gpt2, xlnet (or any "
                              "transformers model type)")


@pytest.fixture
def config_calls(monkeypatch) -> dict[str, int]:
    calls = {"for_model": 0, "from_pretrained": 0}
    for_model, from_pretrained = transformers.AutoConfig.for_model, transformers.AutoConfig.from_pretrained

    def counting_for_model(*args, **kwargs):
        calls["for_model"] += 1
        return for_model(*args, **kwargs)

    def counting_from_pretrained(*args, **kwargs):
        calls["from_pretrained"] += 1
        return from_pretrained(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoConfig, "for_model", counting_for_model)
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", counting_from_pretrained)
    return calls


def test_resolve_from_scratch_makes_the_config_at_most_twice(tmp_path, config_calls):
    model.resolve(flags(tmp_path, model_type="gpt2", config_overrides=GPT2))
    assert config_calls == {"for_model": 2, "from_pretrained": 0}  # the defaults that type the overrides, the build


def test_resolve_without_overrides_makes_the_config_once(tmp_path, config_calls):
    model.resolve(flags(tmp_path, model_type="gpt2"))
    assert config_calls == {"for_model": 1, "from_pretrained": 0}
