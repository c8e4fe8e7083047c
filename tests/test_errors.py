"""Error classes, exit codes and the helpers behind every one-line message."""

from __future__ import annotations

import pytest

from dslm import errors
from dslm.errors import (
    CheckpointError,
    ConfigError,
    DslmError,
    NonFinite,
    PeerLost,
    Stopped,
    first_line,
    suggest,
)


def test_first_line_of_a_long_message():
    assert first_line(ValueError("the first line\nthe second line\nthe third")) == "the first line"
    assert first_line(ValueError("\n\n   indented first  \nsecond")) == "indented first"


def test_first_line_joins_an_introduction_with_the_next_line():
    exc = OSError("Can't load the config for 'x':\n\n  make sure the path is right\nand more")
    assert first_line(exc) == "Can't load the config for 'x': make sure the path is right"
    # A lone "...:" line has nothing to join.
    assert first_line(ValueError("nothing follows:")) == "nothing follows:"
    # Only the first line is looked at for the colon.
    assert first_line(ValueError("a\nb:\nc")) == "a"


@pytest.mark.parametrize("exc", [ValueError(), ValueError(""), ValueError("  \n \n"), KeyboardInterrupt()])
def test_empty_message_gives_the_type(exc):
    assert first_line(exc) == type(exc).__name__


def test_length_limit():
    assert first_line(ValueError("x" * 300)) == "x" * 240
    assert first_line(ValueError("abcdefghijkl"), limit=5) == "abcde"
    assert first_line(ValueError("intro:\n" + "y" * 300), limit=20) == "intro: " + "y" * 13


def test_suggest_names_the_closest():
    choices = ["learning_rate", "logging_steps", "save_steps"]
    assert suggest("lerning_rate", choices) == " (did you mean 'learning_rate'?)"
    assert suggest("save_step", iter(choices)) == " (did you mean 'save_steps'?)"  # any iterable
    assert suggest("lerning_rate", choices, template="; try {}") == "; try learning_rate"


def test_suggest_nothing_close():
    assert suggest("zzzz", ["learning_rate", "seed"]) == ""
    assert suggest("seed", []) == ""


def test_exit_codes():
    assert (errors.EXIT_FAILED, errors.EXIT_BAD_INPUT, errors.EXIT_NONFINITE, errors.EXIT_STOPPED) == (1, 2, 3, 75)
    assert {cls.__name__: cls.exit_code for cls in (DslmError, ConfigError, CheckpointError, NonFinite, Stopped,
                                                    PeerLost)} == {
        "DslmError": 1, "ConfigError": 2, "CheckpointError": 1, "NonFinite": 3, "Stopped": 75, "PeerLost": 1}
    assert ConfigError("x").exit_code == 2


def test_same_on_every_rank():
    assert {cls.__name__: cls.same_on_every_rank for cls in (DslmError, ConfigError, CheckpointError, NonFinite,
                                                             Stopped, PeerLost)} == {
        "DslmError": False, "ConfigError": True, "CheckpointError": False, "NonFinite": True, "Stopped": True,
        "PeerLost": False}
    # A call site may say so for one error (as a failed checkpoint commit does) without changing the class.
    error = CheckpointError("x")
    error.same_on_every_rank = True
    assert CheckpointError.same_on_every_rank is False
    assert CheckpointError("y").same_on_every_rank is False


def test_hierarchy():
    for cls in (ConfigError, CheckpointError, NonFinite, Stopped, PeerLost):
        assert issubclass(cls, DslmError)
    assert issubclass(ConfigError, ValueError)  # callers that catch ValueError still see bad input
    assert not issubclass(CheckpointError, ValueError)
