"""Files and directories that are either old or whole, whenever the writer is killed.

Everything is written under a temporary name next to its target, synced, then renamed into
place: a reader (another rank, another node, the next run) never sees half of it.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path


def _sync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temporary(target: Path, pid: int | None = None) -> Path:
    # Host and pid: writers on nodes that share the file system never pick the same name.
    return target.with_name(f".{target.name}.tmp-{socket.gethostname()}-{pid or os.getpid()}")


def _remove_stale(target: Path) -> None:
    """Temporaries a killed writer on this host left for `target` (its pid is gone): a killed build of a big
    cache would otherwise leave gigabytes behind each time."""
    prefix = _temporary(target, 1).name.removesuffix("1")
    for tmp in target.parent.glob(f"{glob.escape(prefix)}*"):
        pid = tmp.name.removeprefix(prefix)
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_file(path: Path, content: str | bytes) -> None:
    """Temp file, fsync, rename, fsync the directory."""
    tmp = _temporary(path)
    with open(tmp, "wb") as f:
        f.write(content.encode() if isinstance(content, str) else content)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _sync_directory(path.parent)


def write_directory(target: Path, fill: Callable[[Path], object], replace: bool = False) -> bool:
    """`fill(tmp)` writes the directory's content into a temporary directory, which then becomes
    `target`. An existing `target` is replaced when `replace`; otherwise it was put there by a
    concurrent writer (a node sharing the file system) and is kept. True if this call's content
    is what `target` now holds."""
    tmp = _temporary(target)
    if target.parent.is_dir():
        _remove_stale(target)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        fill(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if replace and target.exists():
        remove(target)
    try:
        if target.exists():  # rename would replace an empty directory: keep it, as a non-empty one is kept
            raise FileExistsError(target)
        tmp.rename(target)
    except OSError:  # another writer got there first: its content is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
        return False
    _sync_directory(target.parent)
    return True


def remove(path: Path) -> None:
    """Rename, then delete: a kill midway leaves a hidden directory, not a half one under its name."""
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
    try:
        path.rename(trash)
    except FileNotFoundError:  # removed already (another node sharing the file system)
        return
    if trash.is_dir():
        shutil.rmtree(trash, ignore_errors=True)
    else:
        trash.unlink(missing_ok=True)
