"""Atomic writes: a file or directory is either old or whole, and no temporary is left behind."""

from __future__ import annotations

import os

import pytest

from dslm import atomic


def test_write_file_text(tmp_path):
    path = tmp_path / "state.json"
    atomic.write_file(path, "héllo\n")
    assert path.read_bytes() == "héllo\n".encode()
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_write_file_bytes_replaces(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"old content that is longer")
    atomic.write_file(path, b"\x00\x01new")
    assert path.read_bytes() == b"\x00\x01new"
    assert [p.name for p in tmp_path.iterdir()] == ["blob"]


def fill_with(files: dict[str, str]):
    seen = []

    def fill(tmp):
        seen.append(tmp)
        for name, text in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)

    return fill, seen


def contents(d):
    return {str(p.relative_to(d)): p.read_text() for p in sorted(d.rglob("*")) if p.is_file()}


def test_write_directory_fills_and_renames(tmp_path):
    target = tmp_path / "cache" / "abc"
    target.parent.mkdir()
    fill, seen = fill_with({"a.txt": "A", "sub/b.txt": "B"})
    assert atomic.write_directory(target, fill) is True
    assert contents(target) == {"a.txt": "A", "sub/b.txt": "B"}
    # filled under a hidden name beside the target, then renamed
    assert seen[0].parent == target.parent and seen[0].name.startswith(".abc.tmp-")
    assert [p.name for p in target.parent.iterdir()] == ["abc"]


def test_write_directory_keeps_an_existing_target(tmp_path):
    target = tmp_path / "abc"
    target.mkdir()
    (target / "theirs.txt").write_text("first writer")
    fill, _ = fill_with({"mine.txt": "second writer"})
    assert atomic.write_directory(target, fill) is False
    assert contents(target) == {"theirs.txt": "first writer"}
    assert [p.name for p in tmp_path.iterdir()] == ["abc"]


def test_write_directory_replace(tmp_path):
    target = tmp_path / "abc"
    target.mkdir()
    (target / "old.txt").write_text("old")
    fill, _ = fill_with({"new.txt": "new"})
    assert atomic.write_directory(target, fill, replace=True) is True
    assert contents(target) == {"new.txt": "new"}
    assert [p.name for p in tmp_path.iterdir()] == ["abc"]  # no trash left


def test_write_directory_cleans_up_when_fill_raises(tmp_path):
    target = tmp_path / "abc"

    def fill(tmp):
        (tmp / "half.txt").write_text("half")
        raise KeyboardInterrupt  # any exception, also a Ctrl-C

    with pytest.raises(KeyboardInterrupt):
        atomic.write_directory(target, fill)
    assert list(tmp_path.iterdir()) == []


def test_write_directory_clears_a_stale_temporary(tmp_path):
    target = tmp_path / "abc"
    fill, seen = fill_with({"a.txt": "A"})
    stale = atomic._temporary(target)  # left by this same host and pid, e.g. a previous attempt
    stale.mkdir()
    (stale / "junk").write_text("junk")
    assert atomic.write_directory(target, fill) is True
    assert seen == [stale]
    assert contents(target) == {"a.txt": "A"}
    assert [p.name for p in tmp_path.iterdir()] == ["abc"]


def test_remove(tmp_path):
    d = tmp_path / "step-00000002"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "x").write_text("x")
    (tmp_path / "other").write_text("stays")
    atomic.remove(d)
    assert [p.name for p in tmp_path.iterdir()] == ["other"]


def test_temporaries_of_a_killed_writer_on_this_host_are_removed(tmp_path):
    """A writer killed midway leaves its temporary (named by host and pid); the next write of the same target
    removes it when that pid is gone, and leaves a live writer's alone."""
    import socket

    target = tmp_path / "cache"
    host = socket.gethostname()
    dead = next(pid for pid in range(4_190_000, 4_194_000) if not atomic._alive(pid))  # no such process
    stale = tmp_path / f".cache.tmp-{host}-{dead}"
    live = tmp_path / f".cache.tmp-{host}-{os.getppid()}"
    other_host = tmp_path / f".cache.tmp-elsewhere-{dead}"
    for d in (stale, live, other_host):
        d.mkdir()
    atomic.write_directory(target, lambda tmp: (tmp / "x").write_text("1"))
    assert not stale.exists() and live.exists() and other_host.exists() and (target / "x").read_text() == "1"
