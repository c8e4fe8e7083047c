"""W&B's mode from the environment and login, the run config it gets (secrets redacted); --report_to and
--wandb_log_model; TensorBoard's event files, read back with its own reader."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from dslm import trackers
from dslm.config import LoggingConfig
from dslm.errors import ConfigError
from dslm.trackers import TensorBoardRun, wandb_config, wandb_mode

NETRC_ENTRY = "machine api.wandb.ai\n  login user\n  password 0123456789abcdef0123456789abcdef01234567\n"


@pytest.fixture
def no_login(monkeypatch, tmp_path) -> Path:
    """No W&B variables and an empty home: nothing to log in with."""
    for name in ("WANDB_MODE", "WANDB_API_KEY", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def write_netrc(path: Path, text: str = NETRC_ENTRY, mode: int = 0o600) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_offline_without_a_login(no_login):
    assert wandb_mode() == "offline"


@pytest.mark.parametrize(("mode", "expected"), [
    ("offline", "offline"), ("online", "online"), ("disabled", "disabled"), ("dryrun_disabled", "disabled"),
    ("shared", "shared"),
])
def test_wandb_mode_variable_wins(no_login, monkeypatch, mode, expected):
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef0123456789abcdef01234567")
    monkeypatch.setenv("WANDB_MODE", mode)
    assert wandb_mode() == expected


def test_empty_wandb_mode_is_unset(no_login, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "")
    assert wandb_mode() == "offline"


def test_api_key_means_online(no_login, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef0123456789abcdef01234567")
    assert wandb_mode() == "online"


def test_netrc_in_home_means_online(no_login):
    write_netrc(no_login / ".netrc")
    assert wandb_mode() == "online"


def test_netrc_for_another_machine(no_login):
    write_netrc(no_login / ".netrc", "machine example.com login u password p\n")
    assert wandb_mode() == "offline"


def test_unparsable_netrc(no_login):
    write_netrc(no_login / ".netrc", "garbage here\n" + NETRC_ENTRY)
    assert wandb_mode() == "offline"


def test_netrc_entry_without_a_key(no_login):
    write_netrc(no_login / ".netrc", "machine api.wandb.ai login user password\n")
    assert wandb_mode() == "offline"


def test_netrc_named_by_the_netrc_variable(no_login, monkeypatch, tmp_path):
    monkeypatch.setenv("NETRC", str(write_netrc(tmp_path / "wandb.netrc")))
    assert wandb_mode() == "online"


def test_readable_netrc_in_home(no_login):
    write_netrc(no_login / ".netrc", mode=0o644)
    assert wandb_mode() == "online"


def test_wandb_config_redacts_secrets_and_keeps_versions(monkeypatch):
    monkeypatch.setattr(trackers, "git_commit", lambda: "0" * 7)  # no git subprocess in the fast tier
    config = {"train": {"seed": 42, "output_dir": "out"},
              "logging": {"wandb_project": "p", "hub_token": "a-secret-value", "run_name": None}}
    ds = {"train_batch_size": 8, "zero_optimization": {"stage": 2}}
    facts = {"model_type": "bert", "parameters": 1000}
    out = wandb_config(config, ds, facts)
    assert out["train"] == {"seed": 42, "output_dir": "out"}
    assert out["logging"] == {"wandb_project": "p", "hub_token": "***", "run_name": None}
    assert out["deepspeed"] == ds
    assert out["run"] == facts
    assert out["git_commit"] == "0000000"
    versions = trackers.library_versions()
    assert out["versions"] == versions
    assert list(versions) == ["dslm", "torch", "deepspeed", "transformers", "datasets", "tokenizers", "wandb"]
    import torch

    assert versions["torch"] == torch.__version__
    assert config["logging"]["hub_token"] == "a-secret-value"  # the caller's dict is not changed


def test_an_empty_wandb_mode_is_unset_and_an_unknown_one_refused(monkeypatch):
    from dslm.errors import ConfigError
    from dslm.trackers import check_environment

    monkeypatch.setenv("WANDB_MODE", "")  # wandb's own settings would fail on it with a traceback
    check_environment()
    assert "WANDB_MODE" not in os.environ
    monkeypatch.setenv("WANDB_MODE", "offlne")
    with pytest.raises(ConfigError, match="WANDB_MODE='offlne' is not a W&B mode: set online, offline or disabled"):
        check_environment()
    monkeypatch.setenv("WANDB_MODE", "offline")
    check_environment()
    assert os.environ["WANDB_MODE"] == "offline"


# ---- --report_to and --wandb_log_model

def test_report_to_lists_and_all(monkeypatch):
    assert LoggingConfig(report_to="wandb,tensorboard").trackers == ["wandb", "tensorboard"]
    assert LoggingConfig(report_to=" tensorboard ").trackers == ["tensorboard"]
    assert LoggingConfig(report_to="none").trackers == []
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "tensorboard" else real(name))
    assert LoggingConfig(report_to="all").trackers == ["wandb", "tensorboard"]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name))
    assert LoggingConfig(report_to="all").trackers == ["wandb"]
    with pytest.raises(ConfigError, match="--report_to is empty"):
        LoggingConfig(report_to=" , ").check()
    with pytest.raises(ConfigError, match=r"TensorBoard is not installed: pip install tensorboard"):
        LoggingConfig(report_to="wandb,tensorboard").check()


def test_log_model_from_the_flag_or_the_trainers_variable(monkeypatch):
    monkeypatch.delenv("WANDB_LOG_MODEL", raising=False)
    assert LoggingConfig().log_model == "false"
    monkeypatch.setenv("WANDB_LOG_MODEL", "checkpoint")
    assert LoggingConfig().log_model == "checkpoint"
    assert LoggingConfig(wandb_log_model="end").log_model == "end"
    LoggingConfig(report_to="none").check()  # the variable alone does not need W&B on
    monkeypatch.setenv("WANDB_LOG_MODEL", "TRUE")
    assert LoggingConfig().log_model == "end"  # the Trainer still reads its older spelling so
    monkeypatch.setenv("WANDB_LOG_MODEL", "sometimes")
    with pytest.raises(ConfigError, match="WANDB_LOG_MODEL 'sometimes': use end"):
        LoggingConfig().check()


# ---- TensorBoard, read back with TensorBoard's own reader

def scalars(logdir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_tensorboard_writes_each_figure_at_its_step(tmp_path):
    tb = TensorBoardRun(tmp_path, None, {"train": {"learning_rate": 1e-3}}, say=lambda line: None)
    tb.log(2, {"train/loss": 5.5, "train/grad_norm": None, "train/tokens_seen": 128, "note": "text"})
    tb.log(4, {"train/loss": 5.25, "eval/perplexity": 190.0})
    tb.finish()
    assert scalars(tmp_path / "tensorboard", "train/loss") == [(2, 5.5), (4, 5.25)]
    assert scalars(tmp_path / "tensorboard", "train/tokens_seen") == [(2, 128.0)]
    assert scalars(tmp_path / "tensorboard", "eval/perplexity") == [(4, 190.0)]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    (config,) = events.Tensors("config/text_summary")
    assert config.step == 0 and b'"learning_rate": 0.001' in config.tensor_proto.string_val[0]


def test_a_resumed_run_replaces_what_the_interrupted_one_logged_after_its_checkpoint(tmp_path):
    """Killed at step 7 after a checkpoint at step 5: the resumed run logs 6 and 7 again, and TensorBoard shows
    each step once, with the resumed run's value."""
    first = TensorBoardRun(tmp_path, None, {}, say=lambda line: None)
    for step in range(1, 8):
        first.log(step, {"train/loss": 10.0 - step})
    first.writer.flush()  # what a kill leaves: the files as written, never closed
    resumed = TensorBoardRun(tmp_path, 5, {}, say=lambda line: None)
    for step in range(6, 10):
        resumed.log(step, {"train/loss": 100.0 - step})
    resumed.finish()
    assert scalars(tmp_path / "tensorboard", "train/loss") == [
        (1, 9.0), (2, 8.0), (3, 7.0), (4, 6.0), (5, 5.0), (6, 94.0), (7, 93.0), (8, 92.0), (9, 91.0)]
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 2


def test_artifacts_asked_while_wandb_is_disabled_say_so(monkeypatch, tmp_path):
    from dslm.config import RunConfig

    monkeypatch.setenv("WANDB_MODE", "disabled")
    said = []
    config = RunConfig.from_flags(wandb_log_model="end", report_to="wandb")
    assert trackers.start(config, {}, {}, tmp_path, None, said.append) == []
    assert said == ["warning: W&B is disabled (WANDB_MODE): --wandb_log_model end logs no model"]
