"""The output directory's policy: refuse a previous run's outputs, resume it, or clear it, and never
lose anything on a start that fails."""

from __future__ import annotations

import shutil
from pathlib import Path

from dslm import inputs
from dslm.checkpoint import STATE, Checkpoints, Found
from dslm.config import RunConfig
from dslm.errors import ConfigError

RUN_OUTPUTS = ("checkpoints", "final", "metrics.jsonl", "results.json", "ds_config.json", "run_config.json")


def check(config: RunConfig) -> None:
    """Refuse to start over a previous run unless told; resuming it is the default. Runs before anything
    is written, on every rank."""
    t = config.train
    out = Path(t.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output_dir {out} is a file: choose a directory")
    inputs.check_writable("output_dir", out)  # a read-only or full file system fails now, not at the first save
    if config.data.cache_dir:
        inputs.check_writable("cache_dir", Path(config.data.cache_dir))
    resume = t.resume_from_checkpoint
    if resume not in ("auto", "none"):
        if not (Path(resume) / STATE).exists():
            raise ConfigError(f"--resume_from_checkpoint {resume}: not a dslm checkpoint; give a directory under "
                              f"OUTPUT_DIR/checkpoints, or auto, or none")
        return
    previous = [name for name in RUN_OUTPUTS if (out / name).exists()]
    has_checkpoints = (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir())
    if t.overwrite_output_dir or not previous or (resume == "auto" and has_checkpoints):
        return
    hint = "--resume_from_checkpoint auto to continue it, " if has_checkpoints else ""
    raise ConfigError(f"--output_dir {out} already holds a run ({', '.join(previous)}): pass {hint}"
                      f"--overwrite_output_dir to start over, or choose another --output_dir")


def refuse_foreign(checkpoints: Checkpoints, found: Found | None, overwrite: bool) -> None:
    """A fresh start would save over another run's checkpoints: refused (on every rank alike)."""
    if found or overwrite:
        return
    foreign = checkpoints.foreign()
    if foreign:
        raise ConfigError(f"{checkpoints.root} holds checkpoints of another run ({foreign[0].name}: different model, "
                          f"data or seed): use another --output_dir, or --overwrite_output_dir to replace them")


def clear_previous_run(out: Path, checkpoints: bool) -> None:
    """Only once the new run is ready to train: a failed start must not lose the old outputs.

    Checkpoints go only with --overwrite_output_dir; otherwise other runs' checkpoints stay
    (rotation never touches them either).
    """
    for name in RUN_OUTPUTS:
        path = out / name
        if name == "checkpoints" and not checkpoints:
            continue
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
