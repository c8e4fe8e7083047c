"""The figures a run reports: loss and tokens since the last log, throughput, MFU, memory, perplexity."""

from __future__ import annotations

import math
import time

import psutil
import torch

from dslm import dist


def elapsed() -> float:
    """Seconds since this process started (so the first logged step shows the start-up time)."""
    return time.time() - psutil.Process().create_time()


def device_name() -> str:
    """The accelerator a rank trains on, as `dslm runs` shows it."""
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def memory_figures() -> dict[str, float]:
    if torch.cuda.is_available():
        return {"memory/peak_gpu_gb": torch.cuda.max_memory_allocated() / 2**30}
    return {"memory/rss_gb": psutil.Process().memory_info().rss / 2**30}


# Dense peak TFLOP/s by GPU name and precision (vendor data sheets, without sparsity).
PEAK_TFLOPS = {"H100": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
               "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
               "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}, "L4": {"bf16": 121.0, "fp16": 121.0, "fp32": 30.3}}


def flops_per_token(n_params: int, n_layers: int, hidden: int, seq: int, objective: str) -> float:
    """Training FLOPs per token, PaLM-style: 6N for the weights plus 12*L*H*T for attention
    (forward and backward of QK^T and AV). XLNet's two attention streams double the attention term."""
    attention = 12 * n_layers * hidden * seq
    return 6 * n_params + attention * (2 if objective == "plm" else 1)


def peak_flops(precision: str) -> float | None:
    """Peak FLOP/s of this rank's GPU, or None where unknown (and on CPUs)."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, table in PEAK_TFLOPS.items():
        if key in name:
            return table[precision] * 1e12
    return None


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))  # exp overflows past ~700; 50 is already astronomically bad


class Window:
    """Summed token losses, label tokens and input tokens since the last log, on the device: read (and the
    ranks summed) only at logging steps and saves, so the hot loop never waits for the device."""

    def __init__(self, device: torch.device, sources: int = 0) -> None:
        # [summed loss, label tokens, input tokens, input tokens of each training source] of this rank;
        # float64 counts exactly past 2**24
        self.sums = torch.zeros(3 + sources, device=device, dtype=torch.float64)
        self.sources = sources
        self.since = time.perf_counter()

    def add_tokens(self, per_sample: torch.Tensor, source: torch.Tensor | None = None) -> None:
        """A micro batch's input tokens (CPU tensors: no device sync), and with `source` (each sample's
        source) the tokens of each source."""
        self.sums[2] += int(per_sample.sum())
        if source is not None and self.sources:
            self.sums[3:] += torch.bincount(source, weights=per_sample.double(), minlength=self.sources).to(
                self.sums.device)

    def add_step(self, loss_sum: torch.Tensor, label_tokens: int) -> None:
        """An applied step: a skipped step's loss stays out of the logged mean."""
        self.sums[0] += loss_sum
        self.sums[1] += label_tokens

    def unlogged_tokens(self) -> int:
        """Input tokens of every rank since the last log (a collective), without resetting the window."""
        tokens = self.sums[2].clone()
        dist.all_reduce(tokens)
        return int(tokens.item())

    def take(self) -> tuple[float | None, int, float]:
        """(the token-weighted mean loss, None when every step was skipped; input tokens of every rank;
        seconds) since the last take, then start a new window (`by_source` keeps each source's tokens of
        every rank). A collective."""
        dist.all_reduce(self.sums)
        loss_sum, label_tokens, tokens, *by_source = self.sums.tolist()
        self.by_source = [int(n) for n in by_source]
        now = time.perf_counter()
        seconds, self.since = now - self.since, now
        self.sums.zero_()
        return (loss_sum / label_tokens if label_tokens else None), int(tokens), seconds

    def unlogged_by_source(self) -> list[int]:
        """Each source's input tokens of every rank since the last log (a collective), without resetting."""
        tokens = self.sums[3:].clone()
        dist.all_reduce(tokens)
        return [int(n) for n in tokens.tolist()]
