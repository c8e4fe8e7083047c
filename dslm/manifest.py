"""A checkpoint's manifest: every file with its size and SHA-256, hashed (and synced) by all ranks
together, each its share, and checked the same way before a resume or an export."""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dslm import dist

MANIFEST, COMMIT = "dslm_manifest.json", "dslm_commit.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:  # fsync works on any descriptor
        os.fsync(f.fileno())


def _shares(files: list[Path], world: int) -> list[list[Path]]:
    """Split the files over the ranks by size, largest first onto the least loaded rank: every rank
    computes the same split from the same listing."""
    shares: list[list[Path]] = [[] for _ in range(world)]
    loads = [0] * world
    for path in sorted(files, key=lambda p: (-p.stat().st_size, p.name)):
        least = loads.index(min(loads))
        shares[least].append(path)
        loads[least] += path.stat().st_size
    return shares


def entries_together(tag_dir: Path) -> tuple[dict[str, list], str | None]:
    """[size, sha256] of every file of the checkpoint, each rank hashing (and syncing) its share:
    reading a large checkpoint back through one rank would take longer than writing it. A rank that
    cannot read or sync its share says why instead (a collective: no rank may leave early)."""
    entries: dict[str, list] = {}
    error = None
    try:
        mine = _shares(_files(tag_dir), dist.world_size())[dist.rank()]
        # The disk flushes the share while this rank hashes it (from the page cache): the two overlap.
        with ThreadPoolExecutor(max_workers=1) as pool:
            synced = pool.submit(lambda: [_fsync(p) for p in mine])
            entries = {str(p.relative_to(tag_dir)): [p.stat().st_size, _sha256(p)] for p in mine}
            synced.result()
    except OSError as exc:
        error = f"on rank {dist.rank()}: {exc}"
    merged: dict[str, list] = {}
    errors = []
    for part, problem in dist.all_gather_object((entries, error)):
        merged.update(part)
        errors += [problem] if problem else []
    return dict(sorted(merged.items())), errors[0] if errors else None


def _files(tag_dir: Path) -> list[Path]:
    skip = {MANIFEST, COMMIT}
    return sorted(p for p in tag_dir.rglob("*")
                  if p.is_file() and p.name not in skip and "universal" not in p.relative_to(tag_dir).parts)


def size_of(tag_dir: Path) -> int:
    return sum(p.stat().st_size for p in _files(tag_dir))


def verify(tag_dir: Path, rank: int = 0, world: int = 1) -> str | None:
    """None if the checkpoint is committed and its files match the manifest, else what is wrong.

    Every file's presence and size are checked; the checksums of this rank's share only (the same
    split as at save time), so `world` ranks together read the checkpoint once.
    """
    if not (tag_dir / COMMIT).exists():
        return "no commit marker (the save did not finish)"
    try:
        files = json.loads((tag_dir / MANIFEST).read_text())["files"]
        entries = [(rel, int(size)) for rel, (size, _) in files.items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "unreadable manifest"
    paths = []
    for rel, size in entries:
        path = tag_dir / rel
        if not path.is_file():
            return f"missing {rel}"
        if path.stat().st_size != size:
            return f"{rel} has {path.stat().st_size} bytes, the manifest says {size}"
        paths.append(path)
    for path in _shares(paths, world)[rank]:
        if _sha256(path) != files[str(path.relative_to(tag_dir))][1]:
            return f"{path.relative_to(tag_dir)} does not match its checksum"
    return None


def verify_together(tag_dir: Path) -> str | None:
    """`verify` by every rank at once, each hashing its share; the same answer on every rank (a collective)."""
    try:
        problem = verify(tag_dir, dist.rank(), dist.world_size())
    except OSError as exc:
        problem = f"unreadable ({exc})"
    return next((p for p in dist.all_gather_object(problem) if p), None)
