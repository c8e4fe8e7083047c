"""`--profile A-B`: a torch.profiler trace of optimizer steps A to B (rank 0), for TensorBoard and Perfetto,
and a short table of the operators that took the time."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dslm.errors import ConfigError

ROWS = 12  # operators in the closing table


def parse(spec: str | None) -> tuple[int, int] | None:
    """'5' or '5-7' -> (first, last) step, both included; None or '' -> no profiling."""
    if not spec:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+))?\s*", str(spec))
    if not match:
        raise ConfigError(f"--profile {spec!r}: give a step or a range of steps, e.g. --profile 5 or --profile 5-7")
    first, last = int(match.group(1)), int(match.group(2) or match.group(1))
    if not 1 <= first <= last:
        raise ConfigError(f"--profile {spec}: steps count from 1 and the range must not run backwards")
    return first, last


class StepProfiler:
    """Starts before step `first`, stops after step `last`; writes the trace and keeps the table."""

    def __init__(self, steps: tuple[int, int] | None, out_dir: Path, enabled: bool) -> None:
        self.steps = steps if enabled else None
        self.out_dir = out_dir / "profile"
        self.prof: torch.profiler.profile | None = None
        self.table: str | None = None
        self.trace: Path | None = None

    def before(self, step: int) -> None:
        if self.steps and step == self.steps[0] and self.prof is None:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.prof = torch.profiler.profile(activities=activities, profile_memory=True, record_shapes=True)
            self.prof.start()

    def after(self, step: int) -> None:
        if self.prof is None or step < self.steps[1]:
            return
        self.prof.stop()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        first, last = self.steps
        # TensorBoard's profiler plugin reads *.pt.trace.json in the log directory; Perfetto opens the same file.
        self.trace = self.out_dir / f"rank0.steps-{first}-{last}.pt.trace.json"
        self.prof.export_chrome_trace(str(self.trace))
        sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        self.table = self.prof.key_averages().table(sort_by=sort, row_limit=ROWS)
        self.prof = None

    def summary(self) -> str | None:
        """The closing lines: where the trace is and the top operators (None when nothing was profiled)."""
        if self.table is None:
            return None
        first, last = self.steps
        return (f"profile of steps {first}-{last} (rank 0): {self.trace} (open it in Perfetto, ui.perfetto.dev, or "
                f"TensorBoard with the profiler plugin: tensorboard --logdir {self.out_dir})\n{self.table}")


def kept_for_backward(fn: Callable[[], Any]) -> tuple[Any, int]:
    """fn's result and the bytes autograd saves for the backward while it runs (saved-tensor hooks: what a
    backward will hold, whatever the allocator does)."""
    total = 0

    def pack(x: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += x.numel() * x.element_size()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        result = fn()
    return result, total
