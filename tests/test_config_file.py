"""--config FILE: the flags of a YAML or JSON file, the command line over them; run_config.json is one."""

from __future__ import annotations

import json
from pathlib import Path

import model_dirs
import pytest
from conftest import ROOT, TINY, dslm, metrics, tiny_flags
from test_cli import assert_one_line_error, run_cli

from dslm.config import RunConfig, file_flags

EXAMPLES = sorted((ROOT / "launch" / "configs").glob("*.yaml"))


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_flat_yaml_and_the_command_line_over_it(tmp_path):
    path = write(tmp_path / "c.yaml", "learning_rate: 1e-3\nmax_steps: 7\nwhole_word_mask: true\n"
                                      "wandb_tags: [a, b]\nvalidation_split_percentage: 10\n")
    config = RunConfig.from_flags(config=path, max_steps=9)
    assert config.train.learning_rate == 1e-3  # YAML reads 1e-3 as a string: still a float flag
    assert config.train.max_steps == 9 and config.objective.whole_word_mask is True
    assert config.logging.wandb_tags == "a,b" and config.data.validation_split_percentage == 10.0
    assert {"learning_rate", "max_steps", "whole_word_mask"} <= config.given


def test_every_key_of_a_file_people_write_counts_as_given(tmp_path):
    """A value written in the file is a choice, even when it is the default: a DeepSpeed JSON may not overrule it."""
    path = write(tmp_path / "c.json", json.dumps({"learning_rate": 5e-4, "seed": 42, "max_steps": 3}))
    assert RunConfig.from_flags(config=path).given == {"learning_rate", "seed", "max_steps"}


def test_a_file_value_that_the_deepspeed_json_contradicts_is_refused(capsys, tmp_path):
    ds = write(tmp_path / "ds.json", json.dumps({"optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
                                                  "zero_optimization": {"stage": 2}}))
    path = write(tmp_path / "c.yaml", "learning_rate: 5.0e-4\n")  # the default, written down
    code, err = run_cli(capsys, "train", "--config", path, "--deepspeed", ds, "--output_dir", str(tmp_path / "o"))
    assert_one_line_error(code, err, "sets optimizer.params.lr=0.001 but --learning_rate is 0.0005")


def test_run_config_json_says_which_flags_its_run_was_given(tmp_path):
    config = RunConfig.from_flags(max_steps=11, model_type="gpt2", learning_rate=3e-4, report_to="none")
    path = write(tmp_path / "run_config.json", json.dumps({**config.to_dict(), "given": sorted(config.given)}))
    again = RunConfig.from_flags(config=path)
    assert again.to_dict() == config.to_dict()
    assert again.given == {"max_steps", "model_type", "learning_rate", "report_to"}  # the rest stay defaults
    again = RunConfig.from_flags(config=path, seed=7)
    assert again.given == {"max_steps", "model_type", "learning_rate", "report_to", "seed"}


@pytest.mark.parametrize("name, text, message", [
    ("c.yaml", "lerning_rate: 1e-3\n", "unknown key 'lerning_rate' (did you mean learning_rate?)"),
    ("c.json", '{"train": {"max_seq_length": 64}}', "'max_seq_length' belongs in section 'data', not 'train'"),
    ("c.json", '{"train": {"max_step": 64}}', "unknown key 'max_step' (did you mean max_steps?)"),
    ("c.yaml", "max_steps: many\n", "max_steps expects int, got 'many': fix it in the file"),
    ("c.yaml", "learning_rate: null\n", "learning_rate expects float, got null"),
    ("c.yaml", "output_dir: {a: 1}\n", "output_dir expects str, got {'a': 1}"),
    ("c.yaml", "max_steps: [3\n", "is not valid YAML (line 2"),
    ("c.json", '{"max_steps": 3,}', "is not valid JSON"),
    ("c.yaml", "max_steps: 3\nmax_steps: 4\n", "'max_steps' is given twice"),
    ("c.json", '{"max_steps": 3, "train": {"max_steps": 4}}', "'max_steps' is given twice: keep one"),
    ("c.txt", "just some words\n", "is not a mapping of flag names to values"),
    ("c.yaml", "config: other.yaml\n", "unknown key 'config'"),
    ("c.yaml", "on_nan: no\n", "on_nan expects str, got False (YAML reads yes/no/on/off/true/false unquoted"),
    ("c.json", '{"max_steps": 3, "given": "max_steps"}', "'given' must be a list of flag names"),
])
def test_bad_config_files_get_one_line_and_write_nothing(capsys, tmp_path, name, text, message):
    out = tmp_path / "out"
    code, err = run_cli(capsys, "train", "--config", write(tmp_path / name, text), "--output_dir", str(out))
    assert_one_line_error(code, err, message)
    assert f"--config {tmp_path / name}" in err
    assert not out.exists()


def test_a_missing_config_file(capsys, tmp_path):
    code, err = run_cli(capsys, "train", "--config", str(tmp_path / "nope.yaml"))
    assert_one_line_error(code, err, "nope.yaml: no such file; give a YAML or JSON file of flag names and values")


def test_a_typo_in_the_flag_itself(capsys):
    code, err = run_cli(capsys, "train", "--confg", "x.yaml")
    assert_one_line_error(code, err, "unknown flag --confg (did you mean --config?)")


def test_a_file_value_is_checked_as_the_flag_is(capsys, tmp_path):
    code, err = run_cli(capsys, "train", "--config", write(tmp_path / "c.yaml", "max_steps: -5\n"))
    assert_one_line_error(code, err, "--max_steps must be positive")


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_the_example_configs_are_valid(path):
    flags, _ = file_flags(str(path))
    config = RunConfig.from_flags(config=str(path))
    assert config.train.max_steps == flags["max_steps"] > 0 and config.model.objective in ("mlm", "clm", "plm")
    assert (ROOT / config.train.deepspeed).is_file()


def test_the_examples_cover_the_common_jobs():
    jobs = {(f.get("model_name_or_path") or f.get("model_type"), f["objective"], f["deepspeed"])
            for f, _ in map(file_flags, map(str, EXAMPLES))}
    assert jobs == {("bert-base-uncased", "mlm", "ds_configs/zero2.json"), ("gpt2", "clm", "ds_configs/zero2.json"),
                    ("xlnet-base-cased", "plm", "ds_configs/zero2.json"), ("llama", "clm", "ds_configs/zero3.json")}


@pytest.mark.slow
def test_run_config_json_reproduces_the_run(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    dslm("train", *tiny_flags("gpt2", first, "--logging_steps", "1", "--learning_rate", "3e-3", steps=5))
    dslm("train", "--config", str(first / "run_config.json"), "--output_dir", str(second))
    losses = [[m["train/loss"] for m in metrics(out) if "train/loss" in m] for out in (first, second)]
    assert len(losses[0]) == 5 and losses[0] == losses[1]
    evals = [[m["eval/loss"] for m in metrics(out) if "eval/loss" in m] for out in (first, second)]
    assert evals[0] == evals[1]
    assert json.loads((second / "run_config.json").read_text())["train"]["output_dir"] == str(second)


# Each example trained for two steps, on a tiny model of its family (a local directory with the real
# tokenizer's conventions) and the built-in corpus; everything else as the file says.
SMALL = ["--max_seq_length", "64", "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "4",
         "--gradient_accumulation_steps", "1", "--max_steps", "2", "--eval_steps", "2", "--save_steps", "2",
         "--max_eval_samples", "8", "--bf16", "false", "--report_to", "none"]


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_each_example_config_trains(tmp_path, path):
    flags, _ = file_flags(str(path))
    out = tmp_path / "out"
    if "model_name_or_path" in flags:
        family = {"bert-base-uncased": "bert", "gpt2": "gpt2", "xlnet-base-cased": "xlnet"}[flags["model_name_or_path"]]
        model = ["--model_name_or_path", str(model_dirs.make(family, tmp_path / family))]
    else:
        model = ["--config_overrides", TINY[flags["model_type"]], "--vocab_size", "600"]
    dslm("train", "--config", str(path), *model, *SMALL, "--output_dir", str(out), timeout=600)
    result = json.loads((out / "results.json").read_text())
    assert result["train"]["steps"] == 2 and result["objective"] == flags["objective"]
    assert result["zero_stage"] == (3 if "zero3" in flags["deepspeed"] else 2)
    assert result["eval"]["eval/loss"] > 0

