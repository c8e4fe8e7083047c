"""Failures a user can act on: the error classes, their exit codes, and the two helpers every
one-line message uses (the first line of a library's exception, the nearest known name)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

EXIT_FAILED = 1  # the run itself failed (a rank died, a save failed): the same command may resume
EXIT_BAD_INPUT = 2  # the input is wrong: running it again cannot help
EXIT_NONFINITE = 3  # the numbers went bad: resuming would replay the same steps
EXIT_STOPPED = 75  # EX_TEMPFAIL: stopped by a signal after saving; the same command resumes


class DslmError(Exception):
    """A failure the user can act on: printed as one line, no traceback."""

    exit_code = EXIT_FAILED
    same_on_every_rank = False  # then only rank 0 says it


class ConfigError(DslmError, ValueError):
    """A problem with the user's input, found before any work."""

    exit_code = EXIT_BAD_INPUT
    same_on_every_rank = True


class CheckpointError(DslmError):
    """A checkpoint cannot be written or read."""


class NonFinite(DslmError):
    """Inf or NaN in the loss, the gradients or the weights."""

    exit_code = EXIT_NONFINITE
    same_on_every_rank = True


class Stopped(DslmError):
    """A signal asked the job to stop; a checkpoint is committed."""

    exit_code = EXIT_STOPPED
    same_on_every_rank = True


class PeerLost(DslmError):
    """A collective failed because another rank died or hangs; each surviving rank says so itself."""


def first_line(exc: BaseException, limit: int = 240) -> str:
    """The message's first line, with the next one when the first only introduces it ("...:"),
    or the exception's type when it has no message."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    return text[:limit]


def suggest(name: str, choices: Iterable[str], template: str = " (did you mean {!r}?)") -> str:
    """A "did you mean" hint naming the closest of `choices`, or "" when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return template.format(close[0]) if close else ""
