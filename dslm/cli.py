"""The `dslm` command: one Fire verb per job, flags generated from the config dataclasses."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any

from dslm import hostfile
from dslm.config import SECTIONS, RunConfig, all_fields, field_types
from dslm.errors import EXIT_STOPPED, ConfigError, DslmError, PeerLost, first_line, suggest

DEBUG_FLAG = "--debug"


def _quiet_libraries() -> None:
    """Library chatter that says nothing actionable to a user; real failures still surface."""
    import logging

    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*torch.distributed.*deprecated.*")
    for name in ("DeepSpeed", "deepspeed", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # DeepSpeed's notice that it found no GPU, on every rank at its import: dslm's start-up line names the
    # device instead ("1 rank on cpu"), once.
    logging.getLogger("DeepSpeed").addFilter(lambda record: "Setting accelerator to CPU" not in record.getMessage())


def _take_launcher_flags(argv: list[str]) -> tuple[list[str], bool]:
    """Remove what launchers and dslm itself add before Fire sees the arguments.

    The DeepSpeed launcher inserts `--local_rank=N` right after the script, which a Fire CLI
    with several commands rejects; the value belongs in LOCAL_RANK, where DeepSpeed reads it.
    """
    out, debug, i = [], False, 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--local_rank=") or arg.startswith("--local-rank="):
            os.environ.setdefault("LOCAL_RANK", arg.split("=", 1)[1])
        elif arg in ("--local_rank", "--local-rank") and i + 1 < len(argv):
            os.environ.setdefault("LOCAL_RANK", argv[i + 1])
            i += 1
        elif arg == DEBUG_FLAG:
            debug = True
        else:
            out.append(arg)
        i += 1
    return out, debug


def _check_flag_names(args: list[str]) -> None:
    """Fire runs a command before it complains about a flag it could not use: refuse typos first."""
    known = {*all_fields(), "config"}
    bools = {name for name, kind in field_types().items() if kind is bool}
    for arg in args:
        if arg in ("--", "--help", "-h"):
            return
        if not arg.startswith("--"):
            continue
        name = arg[2:].split("=", 1)[0].replace("-", "_")
        if name in known or (name.startswith("no") and name[2:] in bools):
            continue
        raise ConfigError(f"unknown flag --{name}{suggest(name, known, ' (did you mean --{}?)')}: see "
                          f"`dslm train --help`")


def _with_flags(fn: Callable[[RunConfig], Any], summary: str) -> Callable[..., Any]:
    """Give `fn` a signature and docstring built from the config fields, so Fire's --help lists them."""

    def command(**flags: Any) -> None:
        fn(RunConfig.from_flags(**flags))

    params = [inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="str | None")]
    lines = ["    config: YAML or JSON file of flag names and values (run_config.json of a run is one); flags on the "
             "command line override it"]
    for section in SECTIONS.values():
        for f in dataclasses.fields(section):
            params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                            annotation=f.type))
            lines.append(f"    {f.name}: {f.metadata['help']}")
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__doc__ = f"{summary}\n\nArgs:\n" + "\n".join(lines)
    command.__name__ = fn.__name__
    return command


def _train(config: RunConfig) -> None:
    from dslm.train import run

    run(config)


def _prepare(config: RunConfig) -> None:
    from dslm.prepare import run

    run(config)


def export(checkpoint_dir: str, out_dir: str) -> None:
    """Turn a dslm checkpoint (any ZeRO stage) into a Hugging Face model directory.

    Args:
        checkpoint_dir: a checkpoint, e.g. output/checkpoints/step-00001000
        out_dir: where config.json, model.safetensors and the tokenizer go
    """
    from pathlib import Path

    from dslm import checkpoint
    from dslm.export import export as export_checkpoint

    path = Path(checkpoint_dir)
    if not (path / checkpoint.STATE).exists():
        raise ConfigError(f"{checkpoint_dir} is not a dslm checkpoint (no {checkpoint.STATE}): give a directory "
                          f"under OUTPUT_DIR/checkpoints")
    export_checkpoint(path, Path(out_dir))
    print(f"exported {checkpoint_dir} to {out_dir}")


def plot(*run_dirs: str, out: str = "curves.png") -> None:
    """Draw train/eval loss, perplexity and tokens/s of runs against steps and tokens seen.

    Args:
        run_dirs: output directories of dslm runs (each with a metrics.jsonl)
        out: the PNG to write
    """
    from dslm.plot import run

    run(list(run_dirs), out)


def runs(*run_dirs: str, format: str = "markdown") -> None:
    """Compare runs: one row per run (status, model, steps, tokens, losses, tokens/s, wall time, and the settings
    that differ between them), finished or still training.

    Args:
        run_dirs: output directories of dslm train runs
        format: markdown (a table), csv or json (raw numbers; wall time in seconds)
    """
    from dslm.runs import run

    run(list(run_dirs), format)


COMMANDS = {
    "train": _with_flags(_train, "Pretrain or continue pretraining a model (mlm, clm or plm) on a DeepSpeed engine."),
    "prepare": _with_flags(_prepare, "Train the tokenizer and tokenize the data into the cache, ahead of a launch."),
    "export": export,
    "plot": plot,
    "runs": runs,
    "hostfile": hostfile.COMMANDS,
}


def main(argv: list[str] | None = None) -> None:
    args, debug = _take_launcher_flags(list(sys.argv[1:] if argv is None else argv))
    _quiet_libraries()
    import fire

    try:
        if args and args[0] in ("train", "prepare"):
            _check_flag_names(args[1:])
        fire.Fire(COMMANDS, command=args, name="dslm")
    except Exception as exc:
        error = _as_user_error(exc)
        if "dslm.dist" in sys.modules:  # ranks waiting without a timeout learn of it
            from dslm import dist

            dist.announce_failure(str(error) if error else f"{type(exc).__name__}: {first_line(exc)}")
        if error is None or debug:
            raise
        _exit_with(error)
    _exit_done()


def _exit_done() -> None:
    """A finished run leaves at once: everything is written and closed, and an interpreter shutdown with the
    process group's threads still alive can abort (exit 250, "terminate called without an active
    exception": seen on a run that had printed its summary), losing the exit status 0 the launcher reads."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        # Rank 0 hosts the process group's store: leaving before the other ranks are done polling it (the
        # last store-based wait) fails them with "Failed to recv". A last barrier lets them finish first.
        with contextlib.suppress(Exception):
            distributed.barrier()
        os._exit(0)


def _as_user_error(exc: Exception) -> DslmError | None:
    """dslm's own errors, and a collective that failed before the training loop could say at which step."""
    if isinstance(exc, DslmError):
        return exc
    if "dslm.dist" in sys.modules:
        from dslm import dist

        lost = dist.comm_failure(exc, float("nan"))
        if lost:
            return PeerLost(f"stopped while starting: {lost}")
    return None


def _exit_with(exc: DslmError) -> None:
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0 or not exc.same_on_every_rank:  # the same check fails on every rank: say it once
        several = int(os.environ.get("WORLD_SIZE", "1")) > 1
        where = f"rank {rank}: " if rank or (several and not exc.same_on_every_rank) else ""
        print(f"dslm: {'error: ' if exc.exit_code != EXIT_STOPPED else ''}{where}{exc}", file=sys.stderr,
              flush=True)
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_initialized():
        # A normal exit destroys the process group's threads while the peers leave too, which can
        # abort the process (exit 250, "terminate called without an active exception") and lose
        # the exit code that says what happened. Outputs and the W&B run are closed by now.
        sys.stdout.flush()
        if exc.same_on_every_rank:
            # The launcher kills the other ranks as soon as one exits: the others wait (briefly)
            # until rank 0 has said why, or its line could be lost.
            waiter = threading.Thread(target=distributed.barrier, daemon=True)
            waiter.start()
            waiter.join(timeout=10)
        os._exit(exc.exit_code)
    sys.exit(exc.exit_code)
