"""Loaded only by bench/zero3_memory.py, which puts this directory on PYTHONPATH: dslm itself carries no
benchmark hooks.

- Each rank writes its peak RSS (VmHWM) to $DSLM_BENCH_PEAK_DIR/rank-N-build.txt once the model is built
  (before deepspeed.initialize) and to rank-N.txt when training ends, before the final export (which
  consolidates the whole model on rank 0 whatever the build).
- With DSLM_BENCH_WHOLE_BUILD=1 the model is built whole on every rank, as before ZeRO-3's partitioned
  build: the side the benchmark compares against.
"""

import contextlib
import importlib.abc
import importlib.machinery
import os
import sys

TARGET = "dslm.train"


def _peak_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def _record(name: str) -> None:
    path = os.path.join(os.environ["DSLM_BENCH_PEAK_DIR"], f"rank-{os.environ.get('RANK', '0')}{name}.txt")
    with open(path, "w") as f:
        f.write(str(_peak_kib()))


def _patch(module) -> None:
    finish, build = module.finish, module.model.build

    def finish_recorded(*args, **kwargs):
        _record("")
        return finish(*args, **kwargs)

    def build_recorded(*args, **kwargs):
        built = build(*args, **kwargs)
        _record("-build")
        return built

    module.finish, module.model.build = finish_recorded, build_recorded
    if os.environ.get("DSLM_BENCH_WHOLE_BUILD") == "1":
        module.model.partitioned = lambda ds: contextlib.nullcontext()


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("DSLM_BENCH_PEAK_DIR"):
    sys.meta_path.insert(0, _Finder())
