"""What rank 0 reports: the progress bar, metrics.jsonl, results.json and memory figures."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import torch
from tqdm import tqdm


def memory_figures() -> dict[str, float]:
    if torch.cuda.is_available():
        return {"memory/peak_gpu_gb": torch.cuda.max_memory_allocated() / 2**30}
    return {"memory/rss_gb": psutil.Process().memory_info().rss / 2**30}


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))  # exp overflows past ~700; 50 is already astronomically bad


class Tracker:
    """Rank 0 writes; other ranks hold a Tracker that does nothing, so call sites need no rank checks."""

    def __init__(self, output_dir: Path, total_steps: int, enabled: bool, start_step: int = 0) -> None:
        self.enabled = enabled
        self.path = output_dir / "metrics.jsonl"
        self.bar = None
        if enabled:
            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
                            file=sys.stderr, disable=None)

    def log(self, step: int, figures: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, "time": time.time(), **figures}) + "\n")
        if "train/loss" in figures:
            postfix = {"loss": f"{figures['train/loss']:.4f}", "lr": f"{figures['train/learning_rate']:.2e}",
                       "tok/s": f"{figures['perf/tokens_per_second']:.0f}"}
            if self.bar is not None and not self.bar.disable:
                self.bar.set_postfix(postfix, refresh=False)
            else:  # no terminal (a log file, a pod): one line per logging step instead of a bar
                self.print(f"step {step}: " + " ".join(f"{k} {v}" for k, v in postfix.items()))

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def print(self, line: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None and not self.bar.disable:
            self.bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
