"""The output directory's policy: refuse a previous run's outputs, resume it, or clear it, and never
lose anything on a start that fails."""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import socket
import time
from pathlib import Path

from dslm import atomic, dist, inputs
from dslm.checkpoint import STATE, Checkpoints, Found
from dslm.config import RunConfig
from dslm.errors import ConfigError
from dslm.run_files import RUN_FACTS

RUN_OUTPUTS = ("checkpoints", "final", "metrics.jsonl", "results.json", "ds_config.json", "run_config.json",
               RUN_FACTS, "tensorboard")
# The run's identity (its fingerprint: model, objective, data, seed), written as soon as the directory is
# made: a run killed before its first checkpoint is still recognised when the same command runs again.
IDENTITY = "dslm_run.json"
SHARED_WAIT_S = 10.0  # a network file system may show a new file on other nodes only after a few seconds


def run_fingerprint(config: RunConfig, objective: str, family: str, data_fingerprint: str) -> str:
    """What makes checkpoints belong to this run: model, objective, data content and seed; not step
    counts, paths, file times or a retrained tokenizer, so a restarted pod still finds its run."""
    m = config.model
    key = [objective, family, m.model_name_or_path, m.config_overrides, data_fingerprint, config.train.seed]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


def identity(out: Path) -> str | None:
    try:
        return json.loads((out / IDENTITY).read_text())["run_fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def claim(out: Path, fingerprint: str) -> None:
    """Record that `out` holds this run (rank 0, once the run is allowed there)."""
    if dist.is_main() and identity(out) != fingerprint:
        atomic.write_file(out / IDENTITY, json.dumps({"run_fingerprint": fingerprint}))


def check(config: RunConfig, fingerprint: str) -> None:
    """Refuse to start over a previous run unless told; resuming it is the default, and so is starting
    this same run again when it was killed before its first checkpoint. Runs before anything is written,
    on every rank."""
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
    previous = [name for name in (*RUN_OUTPUTS, IDENTITY) if (out / name).exists()]
    has_checkpoints = (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir())
    if t.overwrite_output_dir or not previous or (resume == "auto" and has_checkpoints):
        return
    if resume == "auto" and identity(out) == fingerprint:
        return  # this run, stopped before it committed a checkpoint: it starts again from step 0
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


def clear_results(out: Path) -> None:
    """A resumed run that trains further makes the last export and its results stale: a kill before its own
    export must not leave them to be taken for this run's."""
    if (out / "final").is_dir():
        atomic.remove(out / "final")
    (out / "results.json").unlink(missing_ok=True)


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


def check_shared(out: Path) -> None:
    """Every rank sees what rank 0 writes in `out`: checkpoints are written by all ranks and read back by
    all (a resume verifies every shard), so a node-local output directory would make every checkpoint
    look incomplete and the run start again at step 0. A collective, before any training."""
    token = out / f".dslm-shared-{secrets.token_hex(8)}"
    if dist.is_main():
        atomic.write_file(token, token.name)
    token = Path(dist.broadcast(str(token)))
    deadline = time.monotonic() + SHARED_WAIT_S
    while not token.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    seen = dist.all_gather_object((token.exists(), socket.gethostname()))
    dist.barrier()
    if dist.is_main():
        token.unlink(missing_ok=True)
    blind = [(r, host) for r, (ok, host) in enumerate(seen) if not ok]
    if blind:
        ranks = ", ".join(f"rank {r} on host {host}" for r, host in blind)
        raise ConfigError(f"--output_dir {out} is not shared: {ranks} cannot see the file rank 0 wrote there on host "
                          f"{seen[0][1]}; the output directory must be on storage every node shares (a shared file "
                          f"system, a ReadWriteMany volume): choose such an --output_dir")
