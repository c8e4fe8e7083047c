"""What rank 0 reports: the progress bar, metrics.jsonl, results.json and memory figures."""

from __future__ import annotations

import json
import math
import netrc
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import torch
from tqdm import tqdm

from dslm import redact


def elapsed() -> float:
    """Seconds since this process started (so the first logged step shows the start-up time)."""
    return time.time() - psutil.Process().create_time()


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


def wandb_mode() -> str:
    """WANDB_MODE if set; else online with a login (key or netrc), offline without one."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return "disabled" if mode in ("disabled", "dryrun_disabled") else mode
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        return "online" if netrc.netrc().authenticators("api.wandb.ai") else "offline"
    except (OSError, netrc.NetrcParseError):
        return "offline"


class WandbRun:
    """One W&B run per job, opened by global rank 0 only; resumed under the same id after a restart."""

    def __init__(self, output_dir: Path, resume_step: int | None, name: str, job_type: str, config: dict[str, Any],
                 logging: Any, say: Any) -> None:
        import wandb

        mode = wandb_mode()
        id_file = output_dir / "wandb_run_id"
        run_id = id_file.read_text().strip() if resume_step is not None and id_file.exists() else None
        run_id = run_id or os.environ.get("WANDB_RUN_ID") or uuid.uuid4().hex[:8]
        tags = logging.wandb_tags or os.environ.get("WANDB_TAGS")
        self.run = wandb.init(
            project=logging.wandb_project or os.environ.get("WANDB_PROJECT") or "dslm",
            entity=logging.wandb_entity or os.environ.get("WANDB_ENTITY"),
            group=logging.wandb_group or os.environ.get("WANDB_RUN_GROUP"),
            tags=[t.strip() for t in tags.split(",") if t.strip()] if tags else None,
            name=redact.text(logging.run_name or os.environ.get("WANDB_NAME") or name),
            job_type=job_type, id=run_id, resume="allow", dir=str(output_dir), mode=mode, config=config,
            # No console capture, code or command-line metadata: they could carry secrets.
            settings=wandb.Settings(console="off", silent=True, x_disable_meta=True, disable_code=True,
                                    disable_git=True, save_code=False))
        id_file.write_text(run_id)
        # Resumed, the run continues after the checkpoint's step; a W&B server that already holds
        # later steps (logged before the interruption) would refuse them as going backwards.
        self.skip_until = -1 if resume_step is None else max(resume_step, self.run.step - 1)
        if mode == "offline":
            say(f"W&B: no login found, logging offline to {self.run.dir.rsplit('/files', 1)[0]}; upload later with "
                f"`wandb sync {Path(self.run.dir).parent}`")
        else:
            say(f"W&B: run {run_id} ({mode})")

    def log(self, step: int, figures: dict[str, Any]) -> None:
        if step > self.skip_until:
            self.run.log(figures, step=step)

    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)


class Tracker:
    """Rank 0 writes; other ranks hold a Tracker that does nothing, so call sites need no rank checks.

    W&B gets one `log` call per step with every figure of that step (train, eval, checkpoint).
    """

    def __init__(self, output_dir: Path, total_steps: int, enabled: bool, start_step: int = 0,
                 wandb_run: WandbRun | None = None) -> None:
        self.enabled = enabled
        self.path = output_dir / "metrics.jsonl"
        self.wandb = wandb_run
        self.pending: dict[str, Any] = {}
        self.pending_step: int | None = None
        self.bar = None
        if enabled:
            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
                            file=sys.stderr, disable=None)

    def log(self, step: int, figures: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, "time": time.time(), **figures}) + "\n")
        if self.wandb is not None:
            if self.pending_step is not None and step != self.pending_step:
                self.flush()
            self.pending_step = step
            self.pending.update({k: v for k, v in figures.items() if v is not None})
        if "train/loss" in figures:
            loss = figures["train/loss"]
            postfix = {"loss": "skipped" if loss is None else f"{loss:.4f}",
                       "lr": f"{figures['train/learning_rate']:.2e}",
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

    def flush(self) -> None:
        if self.wandb is not None and self.pending:
            self.wandb.log(self.pending_step, self.pending)
        self.pending, self.pending_step = {}, None

    def close(self, exit_code: int | None = None) -> None:
        """Close the bar; with `exit_code`, also end the W&B run."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.flush()
        if exit_code is not None and self.wandb is not None:
            self.wandb.finish(exit_code)
            self.wandb = None
