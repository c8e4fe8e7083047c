"""W&B's mode from the environment and login, and the run config it gets (secrets redacted)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dslm import trackers
from dslm.trackers import wandb_config, wandb_mode

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
