"""A checkpoint's manifest: written from every file's size and SHA-256, and verified before a resume."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from dslm import atomic
from dslm.manifest import COMMIT, MANIFEST, _shares, entries_together, size_of, verify, verify_together

FILES = {
    "mp_rank_00_model_states.pt": b"m" * 3000,
    "zero_pp_rank_0_mp_rank_00_optim_states.pt": b"o" * 5000,
    "rng_state_00000.pt": b"r" * 700,
    "dslm_state.json": b'{"step": 3}',
    "tokenizer/vocab.txt": b"[PAD]\n[UNK]\n",
}


def make_checkpoint(root: Path) -> Path:
    tag_dir = root / "checkpoints" / "step-00000003"
    for rel, data in FILES.items():
        (tag_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (tag_dir / rel).write_bytes(data)
    (tag_dir / "universal" / "step-00000003").mkdir(parents=True)  # a conversion made later: not in the manifest
    (tag_dir / "universal" / "step-00000003" / "x.pt").write_bytes(b"u" * 10)
    return tag_dir


def commit(tag_dir: Path) -> dict[str, list]:
    """What Checkpointer._commit writes on rank 0."""
    files, problem = entries_together(tag_dir)
    assert problem is None
    atomic.write_file(tag_dir / MANIFEST, json.dumps({"files": files}, indent=1))
    atomic.write_file(tag_dir / COMMIT, json.dumps({"step": 3}))
    return files


@pytest.fixture
def committed(tmp_path) -> Path:
    tag_dir = make_checkpoint(tmp_path)
    commit(tag_dir)
    return tag_dir


def test_entries_list_every_file_with_size_and_sha256(tmp_path):
    tag_dir = make_checkpoint(tmp_path)
    files = commit(tag_dir)
    assert files == {rel: [len(data), hashlib.sha256(data).hexdigest()] for rel, data in sorted(FILES.items())}
    assert list(files) == sorted(FILES)
    # a second listing leaves out the manifest and the marker themselves
    assert entries_together(tag_dir) == (files, None)
    assert size_of(tag_dir) == sum(len(d) for d in FILES.values())


def test_committed_checkpoint_verifies(committed):
    assert verify(committed) is None
    assert verify_together(committed) is None
    assert [verify(committed, rank, 3) for rank in range(3)] == [None, None, None]


def test_no_commit_marker(committed):
    (committed / COMMIT).unlink()
    assert verify(committed) == "no commit marker (the save did not finish)"


def test_truncated_file(committed):
    path = committed / "mp_rank_00_model_states.pt"
    path.write_bytes(b"m" * 100)
    assert verify(committed) == "mp_rank_00_model_states.pt has 100 bytes, the manifest says 3000"


def test_missing_file(committed):
    (committed / "tokenizer" / "vocab.txt").unlink()
    assert verify(committed) == "missing tokenizer/vocab.txt"


def test_edited_file(committed):
    path = committed / "rng_state_00000.pt"
    path.write_bytes(b"r" * 699 + b"R")  # same size
    assert verify(committed) == "rng_state_00000.pt does not match its checksum"
    assert verify_together(committed) == "rng_state_00000.pt does not match its checksum"


def test_each_rank_checks_its_share_of_the_checksums(committed):
    # 2 ranks: the largest file (optim states) is rank 0's, the model states rank 1's
    (committed / "mp_rank_00_model_states.pt").write_bytes(b"M" * 3000)
    assert verify(committed, rank=0, world=2) is None
    assert verify(committed, rank=1, world=2) == "mp_rank_00_model_states.pt does not match its checksum"
    # sizes and presence are every rank's
    (committed / "dslm_state.json").unlink()
    assert verify(committed, rank=0, world=2) == "missing dslm_state.json"


def test_unreadable_manifest(committed):
    (committed / MANIFEST).write_text('{"files": ')
    assert verify(committed) == "unreadable manifest"
    (committed / MANIFEST).unlink()
    assert verify(committed) == "unreadable manifest"


@pytest.mark.parametrize("text", ['{}', '[]', '{"files": {"a": 3}}'])
def test_manifest_of_another_shape(committed, text):
    (committed / MANIFEST).write_text(text)
    assert verify(committed) == "unreadable manifest"


def test_an_added_file_is_not_a_problem(committed):
    (committed / "extra.txt").write_text("added after the commit")
    assert verify(committed) is None


def sized(tmp_path: Path, sizes: dict[str, int]) -> list[Path]:
    paths = []
    for name, size in sizes.items():
        (tmp_path / name).write_bytes(b"x" * size)
        paths.append(tmp_path / name)
    return paths


def test_shares_split_by_size(tmp_path):
    files = sized(tmp_path, {"a": 50, "b": 40, "c": 30, "d": 20, "e": 10})
    shares = _shares(files, 2)
    # largest first onto the least loaded rank: a->0, b->1, c->1, d->0, e->0 (a tie goes to the lower rank)
    assert [[p.name for p in share] for share in shares] == [["a", "d", "e"], ["b", "c"]]
    assert [[p.name for p in share] for share in _shares(files, 1)] == [["a", "b", "c", "d", "e"]]
    # equal sizes are ordered by name, whatever order the listing came in
    same = sized(tmp_path, {"z": 5, "y": 5, "x": 5})
    assert [[p.name for p in share] for share in _shares(same, 2)] == [["x", "z"], ["y"]]


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7, 9])
def test_shares_hold_each_file_once(tmp_path, world):
    files = sized(tmp_path, {f"f{i}": (i * 37) % 11 + 1 for i in range(8)})
    shares = _shares(files, world)
    assert len(shares) == world
    flat = [p for share in shares for p in share]
    assert sorted(flat) == sorted(files)
    assert len(flat) == len(set(flat)) == 8
