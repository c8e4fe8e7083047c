"""Trackers beside metrics.jsonl (W&B, TensorBoard): opened by global rank 0 only, each with the same metric
names and steps; a resumed job continues its own."""

from __future__ import annotations

import json
import netrc
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

from dslm import redact
from dslm.errors import ConfigError

WANDB_MODES = ("online", "offline", "disabled", "dryrun", "shared", "run")


def check_environment() -> None:
    """WANDB_MODE as wandb will read it: set but empty counts as unset (wandb itself would fail on it), and
    a value wandb does not know is refused now, in one line, not as wandb's traceback after the data is
    prepared."""
    mode = os.environ.get("WANDB_MODE")
    if mode == "":
        del os.environ["WANDB_MODE"]
    elif mode is not None and mode not in WANDB_MODES:
        raise ConfigError(f"WANDB_MODE={mode!r} is not a W&B mode: set online, offline or disabled, or unset it")


def wandb_mode() -> str:
    """WANDB_MODE if set; else online with a login (a key, or a netrc entry with one), offline without."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return "disabled" if mode in ("disabled", "dryrun_disabled") else mode
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    return "online" if netrc_key() else "offline"


def netrc_key() -> str | None:
    """The api.wandb.ai key in the netrc file wandb reads ($NETRC, else ~/.netrc). The path is given
    explicitly, as wandb gives it: Python then skips its permission check, which wandb does not make."""
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc").expanduser()
    try:
        entry = netrc.netrc(str(path)).authenticators("api.wandb.ai")
    except (OSError, netrc.NetrcParseError):
        return None
    return entry[2] if entry and entry[2] else None


class WandbRun:
    """One W&B run per job, opened by global rank 0 only; resumed under the same id after a restart."""

    name = "W&B"

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

    def log_model(self, directory: Path, aliases: list[str], metadata: dict[str, Any]) -> None:
        """A Hugging Face model directory as a model artifact of this run (the Trainer's WANDB_LOG_MODEL): its
        files are copied into W&B's staging area, so `directory` may go once this returns."""
        import wandb

        artifact = wandb.Artifact(f"model-{self.run.id}", type="model", metadata=redact.redact(metadata))
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):  # add_dir prints to the console
            artifact.add_file(str(path), name=str(path.relative_to(directory)))
        self.run.log_artifact(artifact, aliases=aliases)

    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)


class TensorBoardRun:
    """Event files in OUTPUT_DIR/tensorboard, read by `tensorboard --logdir OUTPUT_DIR/tensorboard`."""

    name = "TensorBoard"

    def __init__(self, output_dir: Path, resume_step: int | None, config: dict[str, Any], say: Any) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # A resumed run logs again from the step after its checkpoint: a start marker at that step makes
        # TensorBoard drop what the interrupted run's files hold from there on, so no step shows twice.
        self.writer = SummaryWriter(log_dir=str(output_dir / "tensorboard"), flush_secs=10,
                                    purge_step=None if resume_step is None else resume_step + 1)
        if not resume_step:  # a fresh run, or one started again before its first checkpoint
            self.writer.add_text("config", f"```\n{json.dumps(config, indent=2)}\n```", 0)
        say(f"TensorBoard: `tensorboard --logdir {output_dir / 'tensorboard'}`")

    def log(self, step: int, figures: dict[str, Any]) -> None:
        for key, value in figures.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()  # a run in progress (or killed) shows every logged step

    def finish(self, exit_code: int = 0) -> None:
        self.writer.close()


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("dslm", "torch", "deepspeed", "transformers", "datasets", "tokenizers", "wandb"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit() -> str | None:
    """The commit of the dslm checkout that runs, when it is one."""
    try:
        proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def wandb_config(config: dict[str, Any], ds: dict[str, Any], facts: dict[str, Any]) -> dict[str, Any]:
    """The run's W&B config, nested for the compare views and sweeps, with secrets redacted."""
    return redact.redact({**config, "deepspeed": ds, "run": facts, "versions": library_versions(),
                          "git_commit": git_commit()})


def start(config: Any, ds: dict[str, Any], facts: dict[str, Any], output_dir: Path, resumed_at: int | None,
          say: Any) -> list[WandbRun | TensorBoardRun]:
    """The job's trackers (global rank 0 calls this), W&B first; none when --report_to none."""
    out: list[WandbRun | TensorBoardRun] = []
    chosen = config.logging.trackers
    if "wandb" in chosen and wandb_mode() != "disabled":
        name = (f"{facts['objective']}-{facts['model_type']}-{facts['parameters'] / 1e6:.1f}M-"
                f"zero{facts['zero_stage']}")
        out.append(WandbRun(output_dir, resume_step=resumed_at, job_type=facts["objective"],
                            config=wandb_config(config.to_dict(), ds, facts), name=name, logging=config.logging,
                            say=say))
    elif "wandb" in chosen and config.logging.log_model != "false":
        say(f"warning: W&B is disabled (WANDB_MODE): --wandb_log_model {config.logging.log_model} logs no model")
    if "tensorboard" in chosen:
        out.append(TensorBoardRun(output_dir, resumed_at, redact.redact({**config.to_dict(), "run": facts}), say))
    return out
