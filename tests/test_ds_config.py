import json

import pytest

from dslm import ds_config
from dslm.config import RunConfig
from dslm.errors import ConfigError


def resolve(ds, world_size=2, hidden_size=64, **flags):
    config = RunConfig.from_flags(**flags)
    return ds_config.resolve(ds, config, world_size=world_size, total_steps=100, warmup_steps=10,
                             hidden_size=hidden_size,
                             on_cpu=True, source="test.json")


@pytest.mark.parametrize("name", ["zero0", "zero1", "zero2", "zero3", "zero2_offload", "zero3_offload"])
def test_every_shipped_config_resolves_without_auto(name):
    ds = resolve(ds_config.load(f"ds_configs/{name}.json"), per_device_train_batch_size=4,
                 gradient_accumulation_steps=3, learning_rate=1e-3, weight_decay=0.1, adam_beta2=0.98, bf16=True)
    assert "auto" not in json.dumps(ds)
    assert ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["gradient_accumulation_steps"] == 3
    assert ds["train_batch_size"] == 4 * 3 * 2
    assert ds["gradient_clipping"] == 1.0
    assert ds["optimizer"]["params"]["lr"] == 1e-3
    assert ds["optimizer"]["params"]["betas"] == [0.9, 0.98]
    assert ds["optimizer"]["params"]["weight_decay"] == 0.1
    assert ds["bf16"]["enabled"] is True and ds["fp16"]["enabled"] is False
    zero = ds["zero_optimization"]
    if "reduce_bucket_size" in zero:  # hidden^2 (the Trainer's), but never below 5M elements
        assert zero["reduce_bucket_size"] == ds_config.MIN_REDUCE_BUCKET
        big = resolve(ds_config.load(f"ds_configs/{name}.json"), hidden_size=4096)
        assert big["zero_optimization"]["reduce_bucket_size"] == 4096 * 4096
    if zero["stage"] == 3:
        assert zero["stage3_prefetch_bucket_size"] == int(0.9 * 64 * 64)
        assert zero["stage3_param_persistence_threshold"] == 640
    offloaded = zero.get("offload_optimizer", {}).get("device") == "cpu"
    # On CPU, plain Adam avoids a minute of JIT-compiling fused Adam; offload needs DeepSpeed's CPU Adam.
    assert ds["optimizer"]["params"].get("torch_adam") is (None if offloaded else True)


def test_explicit_value_matching_or_unrelated_to_flags_is_kept():
    ds = {"train_micro_batch_size_per_gpu": 8, "optimizer": {"type": "AdamW", "params": {"lr": 3e-4}}}
    out = resolve(ds)  # lr not given as a flag: the JSON's value stands
    assert out["optimizer"]["params"]["lr"] == 3e-4
    assert out["train_batch_size"] == 16


def test_explicit_value_contradicting_a_given_flag_names_both():
    ds = {"optimizer": {"type": "AdamW", "params": {"lr": 3e-4}}}
    with pytest.raises(ConfigError, match=r"optimizer.params.lr=0.0003 but --learning_rate is 0.001"):
        resolve(ds, learning_rate=1e-3)
    with pytest.raises(ConfigError, match="gradient_accumulation_steps=4 but --gradient_accumulation_steps"):
        resolve({"gradient_accumulation_steps": 4}, gradient_accumulation_steps=2)
    with pytest.raises(ConfigError, match="train_batch_size=100"):
        resolve({"train_batch_size": 100})


def test_scheduler_section_is_filled_from_flags():
    ds = {"scheduler": {"type": "WarmupDecayLR", "params": {"warmup_num_steps": "auto", "total_num_steps": "auto",
                                                            "warmup_max_lr": "auto", "warmup_min_lr": "auto"}}}
    params = resolve(ds, learning_rate=2e-3)["scheduler"]["params"]
    assert params == {"warmup_num_steps": 10, "total_num_steps": 100, "warmup_max_lr": 2e-3, "warmup_min_lr": 0.0}


def test_fp16_refused_on_cpu():
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        resolve(ds_config.load("zero2"), fp16=True)


def test_unresolvable_auto_is_refused():
    with pytest.raises(ConfigError, match="cannot resolve \"auto\" for zero_optimization.sub_group_size"):
        resolve({"zero_optimization": {"stage": 3, "sub_group_size": "auto"}})


@pytest.mark.parametrize("text, message", [
    ("{not json", "is not valid JSON"),
    ('["a"]', "must hold a JSON object"),
    ('{"zero_optimisation": {"stage": 2}}', "unknown key 'zero_optimisation' \\(did you mean 'zero_optimization'"),
    ('{"zero_optimization": {"stage": 5}}', "stage must be 0, 1, 2 or 3"),
    ('{"zero_optimization": {"stage": 2, "overlap_com": true}}', "unknown zero_optimization key 'overlap_com'"),
])
def test_bad_json_is_refused(tmp_path, text, message):
    path = tmp_path / "ds.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        ds_config.load(str(path))


def test_missing_config_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="no such file; give a JSON file or one of zero0.json"):
        ds_config.load("nope.json")
    assert ds_config.locate("zero3").name == "zero3.json"
