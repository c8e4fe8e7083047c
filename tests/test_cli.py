import os
import subprocess
import sys

import pytest
from conftest import dslm, tiny_flags

from dslm import cli


def test_local_rank_is_taken_out_of_argv(monkeypatch):
    monkeypatch.setattr(os, "environ", {})
    args, debug = cli._take_launcher_flags(["--local_rank=1", "train", "--max_steps", "3"])
    assert args == ["train", "--max_steps", "3"] and not debug
    assert os.environ["LOCAL_RANK"] == "1"
    os.environ.clear()
    args, debug = cli._take_launcher_flags(["train", "--local_rank", "0", "--debug"])
    assert args == ["train"] and debug and os.environ["LOCAL_RANK"] == "0"


@pytest.mark.slow
def test_help_lists_every_flag_with_default_and_help():
    from dslm.config import all_fields

    proc = dslm("train", "--help")
    text = proc.stdout + proc.stderr  # Fire writes help to stderr when it is not a terminal
    for name, field in all_fields().items():
        assert f"--{name}=" in text, name
        assert field.metadata["help"][:40] in text.replace("\n        ", " "), name
    assert "Default: 0.0005" in text


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(list(args))
    err = capsys.readouterr().err
    return exit_info.value.code, err


def assert_one_line_error(code, err, message):
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines == [lines[0]] and lines[0].startswith("dslm: error: "), err
    assert message in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize("args, message", [
    (["--objective", "nlm"], "unknown --objective 'nlm'"),
    (["--model_type", "bort"], "unknown --model_type 'bort'"),
    (["--model_name_or_path", "/no/such/model"], "no such model directory"),
    (["--train_file", "/no/such.txt"], "no such file"),
    (["--objective", "plm", "--model_type", "bert"], "needs a model type such as xlnet"),
    (["--objective", "mlm", "--model_type", "gpt2"], "needs a model type such as bert"),
    (["--deepspeed", "missing.json"], "no such file"),
    (["--max_seq_length", "1000", "--model_type", "gpt2", "--config_overrides", "n_positions=512"],
     "above the model's position limit 512"),
    (["--objective", "plm", "--model_type", "xlnet", "--max_seq_length", "63"], "even --max_seq_length"),
    (["--fp16"], "--fp16 needs a GPU"),
    (["--learning_rat", "1e-3"], "unknown flag --learning_rat (did you mean --learning_rate?)"),
    (["--config_overrides", "num_layers=2"], "configs have no field 'num_layers'"),
    (["--config_overrides", "num_hidden_layers=two"], "is not a valid int"),
    (["--config_overrides", "hidden_size=129,num_attention_heads=2"], "cannot build a bert model"),
    (["--report_to", "comet_ml"], "is not a tracker: use wandb, tensorboard"),
    (["--report_to", "wandb,none"], "all and none stand alone"),
    (["--wandb_log_model", "always"], "use end (the final model), checkpoint (every checkpoint) or false"),
    (["--wandb_log_model", "end", "--report_to", "tensorboard"], "add wandb to --report_to"),
    (["--lr_scheduler_type", "cosine", "--deepspeed", "tests/data/ds_with_scheduler.json"], "drop one"),
])
def test_bad_input_gets_one_line_and_writes_nothing(capsys, tmp_path, args, message):
    out = tmp_path / "out"
    code, err = run_cli(capsys, "train", "--output_dir", str(out), *args)
    assert_one_line_error(code, err, message)
    assert not out.exists()


def test_bad_deepspeed_json_and_empty_file(capsys, tmp_path):
    bad = tmp_path / "ds.json"
    bad.write_text('{"zero_optimization": {"stage": 2},}')
    code, err = run_cli(capsys, "train", "--output_dir", str(tmp_path / "o"), "--deepspeed", str(bad))
    assert_one_line_error(code, err, "is not valid JSON")
    empty = tmp_path / "e.txt"
    empty.write_text("")
    code, err = run_cli(capsys, "train", "--output_dir", str(tmp_path / "o"), "--train_file", str(empty))
    assert_one_line_error(code, err, "is empty")


def test_an_existing_run_is_not_overwritten(capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("{}")
    code, err = run_cli(capsys, "train", "--output_dir", str(out))
    assert_one_line_error(code, err, "already holds a run (results.json): pass --overwrite_output_dir")
    (out / "checkpoints" / "step-00000010").mkdir(parents=True)
    code, err = run_cli(capsys, "train", "--output_dir", str(out), "--resume_from_checkpoint", "none")
    assert_one_line_error(code, err, "pass --resume_from_checkpoint auto to continue it, --overwrite_output_dir")
    code, err = run_cli(capsys, "train", "--output_dir", str(out), "--resume_from_checkpoint", str(tmp_path))
    assert_one_line_error(code, err, "not a dslm checkpoint")
    assert (out / "results.json").read_text() == "{}"


@pytest.mark.slow
def test_errors_in_a_real_process_exit_2_without_traceback(tmp_path):
    proc = dslm("train", "--output_dir", str(tmp_path / "o"), "--objective", "plm", check=False)
    assert proc.returncode == 2
    assert "dslm: error: --objective plm needs a model type such as xlnet" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "dslm", "train", "--max_stepz", "3"], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "did you mean --max_steps" in proc.stderr


@pytest.mark.slow
def test_single_process_entry_points_train_the_same(tmp_path):
    """`dslm train` and `python -m dslm train` make their own one-rank group; same seed, same losses."""
    a, b = tmp_path / "a", tmp_path / "b"
    dslm("train", *tiny_flags("bert", a, "--deepspeed", "ds_configs/zero0.json"))
    from conftest import run, train_losses

    run([sys.executable, "-m", "dslm", "train", *tiny_flags("bert", b, "--deepspeed", "ds_configs/zero0.json")])
    assert train_losses(a) == train_losses(b)
    assert len(train_losses(a)) == 3
