"""Keep API keys, tokens and passwords out of every config, log and file dslm writes."""

from __future__ import annotations

import os
import re
from typing import Any

MASK = "***"
SECRET_NAME = re.compile(r"(api[_-]?key|(^|_)token$|secret|passw(or)?d|credential|(^|_)auth($|_))", re.IGNORECASE)
# Shapes of well-known credentials: W&B keys (40 hex, or a prefixed v1 key), HF tokens, bearer tokens.
SECRET_SHAPE = re.compile(r"\b([0-9a-f]{40}|[a-z0-9_-]*v1_[A-Za-z0-9_-]{20,}|hf_[A-Za-z0-9]{20,}|"
                          r"sk-[A-Za-z0-9_-]{20,})\b")


def secret_values() -> list[str]:
    """Values of environment variables whose names say they are secrets."""
    return [v for k, v in os.environ.items() if SECRET_NAME.search(k) and len(v) >= 8]


def text(value: str, secrets: list[str] | None = None) -> str:
    for secret in secrets if secrets is not None else secret_values():
        value = value.replace(secret, MASK)
    return SECRET_SHAPE.sub(MASK, value)


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
