import pytest

from dslm.config import RunConfig, coerce
from dslm.errors import ConfigError


def test_defaults_validate():
    config = RunConfig.from_flags()
    assert config.train.learning_rate == 5e-4
    assert config.uses_builtin_corpus
    assert config.given == frozenset()


def test_flags_land_in_their_sections_and_are_remembered_as_given():
    config = RunConfig.from_flags(learning_rate=1, max_seq_length=64.0, line_by_line="true")
    assert config.train.learning_rate == 1.0 and isinstance(config.train.learning_rate, float)
    assert config.data.max_seq_length == 64 and isinstance(config.data.max_seq_length, int)
    assert config.data.line_by_line is True
    assert config.given == {"learning_rate", "max_seq_length", "line_by_line"}


def test_fire_tuples_become_strings():
    assert coerce("config_overrides", ("a=1", "b=2")) == "a=1,b=2"


@pytest.mark.parametrize("flags, message", [
    ({"objective": "foo"}, "unknown --objective"),
    ({"mlm_probability": 1.5}, "--mlm_probability must be between 0 and 1"),
    ({"plm_probability": 0}, "--plm_probability must be between 0 and 1"),
    ({"per_device_train_batch_size": 0}, "--per_device_train_batch_size must be positive"),
    ({"learning_rate": -1}, "--learning_rate must be positive"),
    ({"dist_timeout": 0}, "--dist_timeout must be positive"),
    ({"max_steps": -1, "num_train_epochs": 0}, "nothing to train"),
    ({"max_steps": 0}, "--max_steps must be positive, or -1 to train for --num_train_epochs; got 0"),
    ({"max_steps": -2}, "--max_steps must be positive, or -1"),
    ({"learning_rate": float("nan")}, "--learning_rate must be a finite number, got nan"),
    ({"seed": -1}, "--seed must be between 0 and"),
    ({"bf16": True, "fp16": True}, "--bf16 and --fp16 conflict"),
    ({"model_type": "bert", "model_name_or_path": "x"}, "conflict"),
    ({"lr_scheduler_type": "zigzag"}, "unknown --lr_scheduler_type"),
    ({"streaming": True}, "--streaming needs --max_steps"),
    ({"max_seq_length": "long"}, "--max_seq_length expects int"),
    ({"bogus": 1}, "unknown flag --bogus"),
    ({"train_file": "/nonexistent/file.txt"}, "no such file"),
    ({"validation_file": "v.txt"}, "--validation_file needs --train_file"),
    ({"num_shards": 0}, "--num_shards must be at least 1, got 0"),
    ({"shard_index": 0}, "--shard_index needs --num_shards"),
    ({"num_shards": 4, "shard_index": 4}, "--shard_index 4 is out of range for --num_shards 4: use 0 to 3"),
    ({"num_shards": 4, "shard_index": -1}, "--shard_index -1 is out of range"),
    ({"tokenizer_train_samples": 0}, "--tokenizer_train_samples must be at least 1, got 0"),
    ({"streaming": True, "max_steps": 5, "max_train_samples": 10}, "drop --num_shards/--shard_index and "
                                                                    "--max_train_samples"),
])
def test_bad_values_are_refused_with_the_flag_named(flags, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_flags(**flags)


def test_data_file_checks(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        RunConfig.from_flags(train_file=str(empty))
    with pytest.raises(ConfigError, match="is a directory"):
        RunConfig.from_flags(train_file=str(tmp_path))
    odd = tmp_path / "data.xml"
    odd.write_text("<a/>")
    with pytest.raises(ConfigError, match="unsupported file type"):
        RunConfig.from_flags(train_file=str(odd))
