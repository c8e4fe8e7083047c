"""Keep API keys, tokens and passwords out of every config, log and file dslm writes."""

from __future__ import annotations

import os
import re
from typing import Any

MASK = "***"
SECRET_NAME = re.compile(r"(api[_-]?key|(^|_)token$|secret|passw(or)?d|credential|(^|_)auth($|_))", re.IGNORECASE)
# Shapes that only credentials have: W&B's prefixed v1 keys, HF tokens, OpenAI-style keys. A bare 40-hex
# string is not one of them: W&B's legacy keys have that shape, but so do git commit ids and Hugging Face
# snapshot hashes, which must survive; a W&B key is caught by name (WANDB_API_KEY's value, an api_key field).
SECRET_SHAPE = re.compile(r"\b([a-z0-9_-]*v1_[A-Za-z0-9_-]{20,}|hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_-]{20,})\b")
URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]+:)[^/\s@]+(@)", re.IGNORECASE)  # scheme://user:PASSWORD@


def secret_values() -> list[str]:
    """Values of environment variables whose names say they are secrets."""
    return [v for k, v in os.environ.items() if SECRET_NAME.search(k) and len(v) >= 8]


def text(value: str, secrets: list[str] | None = None) -> str:
    for secret in secrets if secrets is not None else secret_values():
        value = value.replace(secret, MASK)
    return URL_PASSWORD.sub(rf"\g<1>{MASK}\g<2>", SECRET_SHAPE.sub(MASK, value))


def redact(obj: Any, secrets: list[str] | None = None) -> Any:
    """A copy of `obj` with secret-named keys masked and secret-looking strings replaced."""
    secrets = secret_values() if secrets is None else secrets
    if isinstance(obj, dict):
        return {k: MASK if isinstance(k, str) and SECRET_NAME.search(k) and v else redact(v, secrets)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v, secrets) for v in obj)
    if isinstance(obj, str):
        return text(obj, secrets)
    return obj
