"""Everything a person or a tool reads of a run, written by global rank 0 only: console lines and the
progress bar, metrics.jsonl, the trackers (W&B, TensorBoard), results.json and the closing summary.

Other ranks hold a Reporter that writes nothing, so call sites need no rank checks. Errors do not come
through here (the CLI prints them, on whichever rank they happen), nor do two lines printed before a run has
a Reporter, each by the one process that does the work: DeepSpeed's comm op compiling (dist.init) and the
tokenizer training (tokenizer.train_once).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from dslm import atomic
from dslm.errors import first_line
from dslm.run_files import read_metrics, set_names
from dslm.trackers import TensorBoardRun, WandbRun


def _key(name: str, figure: str) -> str:
    return f"eval/{name}/{figure}" if name else f"eval/{figure}"


def _label(name: str) -> str:
    return f"{name}: " if name else ""


class Reporter:
    def __init__(self, output_dir: Path, enabled: bool, logging_steps: int = 1, logging_first_step: bool = False,
                 log_model: str = "false"):
        self.enabled = enabled
        self.log_model = log_model  # --wandb_log_model
        self.metrics = output_dir / "metrics.jsonl"
        self.results_path = output_dir / "results.json"
        self.logging_steps, self.logging_first_step = logging_steps, logging_first_step
        self.trackers: list[WandbRun | TensorBoardRun] = []
        self.pending: dict[str, Any] = {}  # trackers get one log call per step with all of that step's figures
        self.pending_step: int | None = None
        self.bar: tqdm | None = None
        self.last_train_loss: float | None = None  # for results.json: the last window's mean

    # ---- the console
    def say(self, line: str, file: TextIO | None = None) -> None:
        """A line for the person watching: above the progress bar while there is one."""
        if not self.enabled:
            return
        if self.bar is not None and not self.bar.disable and file is None:
            self.bar.write(line, file=sys.stdout)
        else:
            print(line, file=file or sys.stdout, flush=True)

    def warn(self, message: str) -> None:
        self.say(f"warning: {message}")

    def start(self, total_steps: int, step: int, opened: list[WandbRun | TensorBoardRun]) -> None:
        """The progress bar from `step` on (a line per logging step where output is not a terminal), and the
        trackers opened for the run."""
        self.trackers = opened
        if self.enabled:
            self.bar = tqdm(total=total_steps, initial=step, desc="train", unit="step", dynamic_ncols=True,
                            file=sys.stderr, disable=None)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def end_progress(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    # ---- metrics.jsonl and the trackers
    def should_log(self, step: int, total: int) -> bool:
        return step % self.logging_steps == 0 or step == total or (self.logging_first_step and step == 1)

    def resumed(self, step: int) -> None:
        """A resumed run logs from `step` on: drop what the interrupted run logged after its checkpoint."""
        if not self.enabled or not self.metrics.exists():
            return
        kept = [row for row in self._rows() if isinstance(row.get("step"), int) and row["step"] <= step]
        atomic.write_file(self.metrics, "".join(json.dumps(row) + "\n" for row in kept))

    def log(self, step: int, figures: dict[str, Any]) -> None:
        if "train/loss" in figures:
            self.last_train_loss = figures["train/loss"]
        if not self.enabled:
            return
        with self.metrics.open("a") as f:
            f.write(json.dumps({"step": step, "time": time.time(), **figures}) + "\n")
        if self.trackers:
            if self.pending_step is not None and step != self.pending_step:
                self._flush()
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
                self.say(f"step {step}: " + " ".join(f"{k} {v}" for k, v in postfix.items()))

    def evaluated(self, step: int, figures: dict[str, float], when: str = "during") -> None:
        """Eval figures, logged; before and during training also a console line (the summary shows the last)."""
        if not figures:
            return
        self.log(step, figures)
        names = set_names(figures)
        if when == "before":
            self.say("eval before training: " + " | ".join(
                f"{_label(name)}loss {figures[_key(name, 'loss')]:.4f} perplexity "
                f"{figures[_key(name, 'perplexity')]:.2f} accuracy {figures[_key(name, 'accuracy')]:.4f}"
                for name in names or [""]))
        elif when == "during":
            self.say(f"step {step}: eval " + " | ".join(
                f"{_label(name)}loss {figures[_key(name, 'loss')]:.4f} perplexity "
                f"{figures[_key(name, 'perplexity')]:.2f}" for name in names or [""]))

    def _flush(self) -> None:
        if self.pending:
            for tracker in list(self.trackers):
                try:
                    tracker.log(self.pending_step, self.pending)
                except Exception as exc:  # any failure of a tracker's process or files
                    self._tracker_lost(tracker, exc)
        self.pending, self.pending_step = {}, None

    def _tracker_lost(self, tracker: WandbRun | TensorBoardRun, exc: Exception) -> None:
        """A tracker that fails (W&B's service process gone: a job's SIGTERM reaches it too, on preemption or a
        SLURM time limit; a full disk under TensorBoard's files) must not end the training or its checkpoint:
        the run goes on without it."""
        self.trackers.remove(tracker)
        self.warn(f"{tracker.name} stopped ({type(exc).__name__}: {first_line(exc)}); the run goes on, and "
                  f"metrics.jsonl has every figure")

    def model_saved(self, directory: Path, step: int, final: bool, facts: dict[str, Any]) -> None:
        """A W&B model artifact as --wandb_log_model asks: the exported final model (end, checkpoint), or a
        checkpoint consolidated into a model directory (checkpoint). A failure costs the artifact only."""
        wandb_run = next((t for t in self.trackers if isinstance(t, WandbRun)), None)
        if wandb_run is None or self.log_model == "false" or (not final and self.log_model != "checkpoint"):
            return
        self._flush()  # the artifact after its step's figures
        metadata = {"step": step, **facts, "train/loss": self.last_train_loss, **self.logged_eval(step)}
        aliases = ["latest", f"step-{step}", *(["final"] if final else [])]
        try:
            if final:
                wandb_run.log_model(directory, aliases, metadata)
            else:
                from dslm import export  # (imports transformers' model classes: only when asked)

                with export.temporary(directory) as model_dir:
                    wandb_run.log_model(model_dir, aliases, metadata)
        except Exception as exc:
            self.warn(f"the model of step {step} was not logged to W&B ({type(exc).__name__}: {first_line(exc)}); "
                      f"the run goes on")

    # ---- the end
    def results(self) -> dict[str, Any]:
        """The results.json of a run that finished before (an "already trained" restart)."""
        return json.loads(self.results_path.read_text()) if self.results_path.exists() else {}

    def _rows(self) -> list[dict[str, Any]]:
        return read_metrics(self.metrics)

    def logged(self, key: str) -> Any:
        """The last value of `key` in metrics.jsonl (rank 0), or None."""
        return next((row[key] for row in reversed(self._rows()) if row.get(key) is not None), None)

    def logged_eval(self, step: int) -> dict[str, float]:
        """The eval figures logged at `step` (rank 0), or {}."""
        return {k: v for row in self._rows() if row.get("step") == step for k, v in row.items()
                if k.startswith("eval/")}

    def finished(self, results: dict[str, Any], final_dir: Path) -> None:
        """results.json and the closing summary line."""
        if not self.enabled:
            return
        atomic.write_file(self.results_path, json.dumps(results, indent=2))  # a kill leaves no torn file
        train, before, after = results["train"], results["eval_before"], results["eval"]
        seconds = train["runtime_s"]
        skipped = f", {train['skipped_steps']} skipped for inf/NaN" if train["skipped_steps"] else ""
        summary = f"done: {train['steps']} steps{skipped}"
        if seconds:
            summary += f" in {seconds:.0f}s ({train['tokens_per_second']:.0f} tokens/s)"
        for name in set_names(after) or ([""] if after else []):
            perplexity, accuracy = _key(name, "perplexity"), _key(name, "accuracy")
            if perplexity in before:
                summary += (f"; {_label(name)}eval perplexity {before[perplexity]:.2f} -> {after[perplexity]:.2f}, "
                            f"accuracy {before[accuracy]:.3f} -> {after[accuracy]:.3f}")
            else:
                summary += f"; {_label(name)}eval perplexity {after[perplexity]:.2f}"
        self.say(summary + f"; model in {final_dir}")

    def close(self, exit_code: int) -> None:
        """The last call: the bar closed, the trackers' last step sent and W&B's run ended with how the job
        ended."""
        self.end_progress()
        self._flush()
        for tracker in list(self.trackers):
            try:
                tracker.finish(exit_code)
            except Exception as exc:
                self._tracker_lost(tracker, exc)
        self.trackers = []
