"""Fault injection for the tests, loaded only when tests put this directory on PYTHONPATH.

DSLM_TEST_NAN="RANK:N,M": on that rank, the logits and loss of the N-th, M-th ... training forward pass
(1-based; with no gradient accumulation, the optimizer step of that number) becomes NaN, so a
real NaN flows through backward, DeepSpeed's overflow check and dslm's guard. It wraps
DeepSpeed's engine once that module is imported: dslm itself carries no test hooks for this.
"""

import importlib.abc
import importlib.machinery
import os
import sys

SPEC = os.environ.get("DSLM_TEST_NAN")
TARGET = "deepspeed.runtime.engine"


def _patch(module) -> None:
    rank, steps = SPEC.split(":")
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
            if calls[0] in bad:  # the logits too: dslm computes the MLM loss itself from them
                out.logits = out.logits * float("nan")
                if out.loss is not None:
                    out.loss = out.loss * float("nan")
        return out

    engine_cls.forward = forward


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        loader = spec.loader
        run = loader.exec_module

        def exec_module(module):
            run(module)
            _patch(module)

        loader.exec_module = exec_module
        return spec


if SPEC:
    sys.meta_path.insert(0, _Finder())
