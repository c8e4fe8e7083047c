"""Fault injection for the tests, loaded only when tests put this directory on PYTHONPATH: dslm itself
carries no test hooks. Each fault wraps a function once its module is imported.

DSLM_TEST_NAN="RANK:N,M": on that rank, the logits and loss of the N-th, M-th ... training forward pass
(1-based; with no gradient accumulation, the optimizer step of that number) become NaN, so a real NaN
flows through backward, DeepSpeed's overflow check and dslm's guard.

DSLM_TEST_KILL="PHASE:N": the N-th time this process reaches PHASE, the whole job is killed with SIGKILL
(its process group: the launcher and every rank, as `kill -9` of the job would), after writing the phase
to $DSLM_TEST_KILL_MARK. Phases: tokenizer (training it), cache (tokenizing), engine (deepspeed.initialize),
step (an optimizer step), shards (a save: every rank's shards written, not yet committed), rotation (a
checkpoint renamed away, not yet deleted), export (the final export, its files written, not yet renamed
into place), universal (DeepSpeed's universal conversion written, not yet marked done).

DSLM_TEST_KILL_RANK="R:STEP": rank R alone dies with SIGKILL between its shards of STEP and the commit.
"""

import importlib
import importlib.abc
import importlib.machinery
import os
import signal
import sys

NAN = os.environ.get("DSLM_TEST_NAN")
KILL = os.environ.get("DSLM_TEST_KILL")
KILL_RANK = os.environ.get("DSLM_TEST_KILL_RANK")
COUNTS: dict[str, int] = {}


def reached(phase: str) -> None:
    """Kill the whole job if this is the N-th time `phase` is reached (DSLM_TEST_KILL)."""
    if not KILL:
        return
    want, nth = KILL.split(":")
    if phase != want:
        return
    COUNTS[phase] = COUNTS.get(phase, 0) + 1
    if COUNTS[phase] == int(nth):
        mark = os.environ.get("DSLM_TEST_KILL_MARK")
        if mark:  # renamed into place: a rank killed mid-write (by another's kill) never leaves it empty
            with open(f"{mark}.{os.getpid()}", "w") as f:
                f.write(f"{KILL} rank {os.environ.get('RANK', '0')}")
            os.replace(f"{mark}.{os.getpid()}", mark)
        os.killpg(os.getpgid(0), signal.SIGKILL)


def wrap(module, name: str, phase: str, before: bool = True) -> None:
    """`module.name` reaches `phase` when called (before=True) or once it has returned."""
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        if before:
            reached(phase)
        result = original(*args, **kwargs)
        if not before:
            reached(phase)
        return result

    setattr(module, name, wrapper)


def patch_engine(module) -> None:
    if not NAN:
        return
    rank, steps = NAN.split(":")
    if os.environ.get("RANK", "0") != rank:
        return
    bad = {int(s) for s in steps.split(",")}
    engine_cls = module.DeepSpeedEngine
    original = engine_cls.forward
    calls = [0]

    def forward(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if self.module.training:
            calls[0] += 1
            if calls[0] in bad:  # the logits too: dslm computes the loss itself from them
                out.logits = out.logits * float("nan")
                if getattr(out, "loss", None) is not None:
                    out.loss = out.loss * float("nan")
        return out

    engine_cls.forward = forward


def patch_checkpoint(module) -> None:
    commit = module.Checkpointer._commit

    def _commit(self, tag_dir, failure):
        if KILL_RANK and f"{os.environ.get('RANK', '0')}:{module.step_of(tag_dir)}" == KILL_RANK:
            os.kill(os.getpid(), signal.SIGKILL)
        reached("shards")
        return commit(self, tag_dir, failure)

    module.Checkpointer._commit = _commit
    rotate = module.Checkpointer.rotate
    atomic = module.atomic

    def rotate_killed(self, current):
        remove = atomic.remove

        def remove_then_die(path):  # renamed away as remove does, then killed before the delete
            import shutil

            trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
            path.rename(trash)
            reached("rotation")
            shutil.rmtree(trash, ignore_errors=True)

        atomic.remove = remove_then_die
        try:
            return rotate(self, current)
        finally:
            atomic.remove = remove

    module.Checkpointer.rotate = rotate_killed
    to_universal = module.to_universal

    def to_universal_killed(tag_dir):
        from deepspeed.checkpoint import ds_to_universal

        convert = ds_to_universal.main

        def main(args):
            convert(args)
            reached("universal")

        ds_to_universal.main = main
        try:
            return to_universal(tag_dir)
        finally:
            ds_to_universal.main = convert

    module.to_universal = to_universal_killed


def patch_export(module) -> None:
    write_directory = module.atomic.write_directory

    def write_directory_killed(target, fill, replace=False):
        def fill_then_die(tmp):
            fill(tmp)
            reached("export")

        return write_directory(target, fill_then_die, replace)

    import types

    # this module's view of atomic, not everyone's
    module.atomic = types.SimpleNamespace(**{**vars(module.atomic), "write_directory": write_directory_killed})


PATCHES = {
    "deepspeed.runtime.engine": patch_engine,
    "dslm.tokenizer": lambda m: wrap(m, "train", "tokenizer"),
    "dslm.data.encode": lambda m: wrap(m, "encoded", "cache"),
    "dslm.engine": lambda m: wrap(m, "build", "engine"),
    "dslm.step": lambda m: wrap(m, "train_step", "step"),
    "dslm.checkpoint": patch_checkpoint,
    "dslm.export": patch_export,
}


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in PATCHES or name in DONE:
            return None
        DONE.add(name)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None:
            return None
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            PATCHES[name](module)

        spec.loader.exec_module = exec_module
        return spec


DONE: set[str] = set()
if NAN or KILL or KILL_RANK:
    sys.meta_path.insert(0, _Finder())
