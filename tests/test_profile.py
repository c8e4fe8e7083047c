"""--profile: which steps, the trace a profiler writes of them, and the closing table."""

from __future__ import annotations

import json

import pytest
import torch

from dslm import profile
from dslm.errors import ConfigError


def test_step_ranges():
    assert profile.parse(None) is None and profile.parse("") is None
    assert profile.parse("5") == (5, 5) and profile.parse("3-7") == (3, 7) and profile.parse(" 2 - 4 ") == (2, 4)
    for bad in ("0", "5-3", "a-b", "1-2-3", "-1"):
        with pytest.raises(ConfigError, match="--profile"):
            profile.parse(bad)


def test_the_trace_of_the_chosen_steps_names_the_model_operators(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    profiler = profile.StepProfiler((2, 3), tmp_path, enabled=True)
    for step in range(1, 5):
        profiler.before(step)
        model(torch.randn(4, 8)).sum().backward()
        profiler.after(step)
    trace = json.loads(profiler.trace.read_text())
    names = {event.get("name") for event in trace["traceEvents"]}
    assert {"aten::linear", "aten::relu"} <= names
    assert profiler.trace.name == "rank0.steps-2-3.pt.trace.json" and profiler.trace.parent == tmp_path / "profile"
    summary = profiler.summary()
    assert "steps 2-3" in summary and "aten::" in summary
    assert profile.StepProfiler((1, 1), tmp_path / "other", enabled=False).summary() is None  # not rank 0
