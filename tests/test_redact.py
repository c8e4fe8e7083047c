"""Secrets are masked by name and by shape wherever dslm writes; commit ids and snapshot hashes are not."""

import subprocess

import pytest

from dslm.redact import redact, text

FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"  # the shape of a (legacy) W&B API key
FAKE_TOKEN = "hf_FakeTokenFakeTokenFakeToken1234"
V1_KEY = "wandb_v1_AbCdEfGhIjKlMnOpQrStUvWxYz012345"


def test_redaction_of_names_and_shapes(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "s3cr3t-value-123")
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    out = redact({"api_key": "x", "tokens_per_step": 4, "tokenizer_name": "t",
                  "nested": ["uses s3cr3t-value-123", FAKE_KEY, FAKE_TOKEN, V1_KEY]})
    assert out == {"api_key": "***", "tokens_per_step": 4, "tokenizer_name": "t",
                   "nested": ["uses ***", "***", "***", "***"]}


def test_a_password_in_a_url_is_masked_and_the_rest_kept():
    assert text("s3://alice:hunter2hunter2@bucket/data and https://host/path", []) == (
        "s3://alice:***@bucket/data and https://host/path")


@pytest.mark.slow  # runs git
def test_commit_ids_and_snapshot_hashes_survive(monkeypatch, tmp_path):
    """A 40-hex string is a secret only where a name says so: W&B's git_commit and an HF snapshot path stay."""
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)

    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                              capture_output=True, text=True, check=True).stdout.strip()

    git("init", "-q")
    git("commit", "-q", "--allow-empty", "-m", "a real commit")
    commit = git("rev-parse", "HEAD")
    assert len(commit) == 40
    snapshot = "/hf/hub/models--gpt2/snapshots/607a30d783dfa663caf39e06633721c8d4cfcd7e"
    out = redact({"git_commit": commit, "model_name_or_path": snapshot, "key": FAKE_KEY})
    assert out == {"git_commit": commit, "model_name_or_path": snapshot, "key": "***"}
