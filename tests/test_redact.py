"""Secrets are masked by name and by shape wherever dslm writes."""

FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"  # the shape of a W&B API key
FAKE_TOKEN = "hf_FakeTokenFakeTokenFakeToken1234"


def test_redaction_of_names_and_shapes(monkeypatch):
    from dslm.redact import redact

    monkeypatch.setenv("MY_SERVICE_TOKEN", "s3cr3t-value-123")
    out = redact({"api_key": "x", "tokens_per_step": 4, "tokenizer_name": "t",
                  "nested": ["uses s3cr3t-value-123", FAKE_KEY, FAKE_TOKEN]})
    assert out == {"api_key": "***", "tokens_per_step": 4, "tokenizer_name": "t", "nested": ["uses ***", "***", "***"]}
