"""DeepSpeed's C++/CUDA ops: whether one can be loaded here, so a config that needs one that cannot is
refused before any work rather than failing inside deepspeed.initialize after a long JIT build."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def extensions_dir() -> Path:
    """Where torch's JIT builds (and finds) C++ ops, as torch.utils.cpp_extension computes it."""
    import sys

    import torch
    from torch.utils.cpp_extension import get_default_build_root

    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    accelerator = (f"rocm{torch.version.hip.replace('.', '')}" if torch.version.hip else
                   f"cu{torch.version.cuda.replace('.', '')}" if torch.version.cuda else "cpu")
    python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    return Path(get_default_build_root()) / f"{python}_{accelerator}"


def op_problem(builder_name: str) -> str | None:
    """None if DeepSpeed can load the op: prebuilt, already JIT-built, or buildable here; else why not."""
    from deepspeed.accelerator import get_accelerator
    from deepspeed.git_version_info import installed_ops

    builder = get_accelerator().create_op_builder(builder_name)
    if builder is None or builder.name == "deepspeed_not_implemented":
        return f"the {get_accelerator().device_name()} accelerator has no such op"
    if installed_ops.get(builder.name):
        return None
    if (extensions_dir() / builder.name / f"{builder.name}.so").is_file():
        return None
    if not builder.is_compatible(False):
        why = getattr(builder, "error_log", None)
        return f"it cannot be built on this machine{f' ({why})' if why else ''}"
    missing = [tool for tool in (os.environ.get("CXX", "c++"), "ninja") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not on PATH to build it"
    return None
