"""The file-level parts of checkpointing: names, which checkpoints are this run's, cadence, rotation, RNG state."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from dslm import checkpoint
from dslm.checkpoint import COMMIT, POINTER, STARTED, STATE, Checkpointer, Checkpoints, estimate_line, step_of, tag
from dslm.errors import ConfigError


def test_tag_and_step_of():
    assert tag(3) == "step-00000003"
    assert tag(12345678) == "step-12345678"
    assert step_of(Path("out/checkpoints/step-00000123")) == 123
    assert step_of(Path(tag(40))) == 40
    assert sorted([tag(10), tag(9), tag(100)]) == [tag(9), tag(10), tag(100)]  # names sort by step


def make(root: Path, step: int, fingerprint: str | None = "mine", committed: bool = True,
         marker: str = STATE) -> Path:
    tag_dir = root / "checkpoints" / tag(step)
    tag_dir.mkdir(parents=True)
    if fingerprint is not None:
        (tag_dir / marker).write_text(json.dumps({"run_fingerprint": fingerprint, "step": step}))
    if committed:
        (tag_dir / COMMIT).write_text(json.dumps({"step": step}))
    return tag_dir


def test_tags_newest_first_and_only_step_directories(tmp_path):
    assert Checkpoints(tmp_path, "mine").tags() == []  # no checkpoints directory
    for step in (2, 10, 1):
        make(tmp_path, step)
    root = tmp_path / "checkpoints"
    (root / "step-3").mkdir()
    (root / "step-000000070").mkdir()  # nine digits
    (root / "step-00000007.tmp-host-1").mkdir()
    (root / ".trash-step-00000004-99").mkdir()
    (root / "step-00000005").write_text("a file")
    (root / POINTER).write_text(tag(10))
    assert [p.name for p in Checkpoints(tmp_path, "mine").tags()] == [tag(10), tag(2), tag(1)]


def test_ours_and_foreign(tmp_path):
    mine = make(tmp_path, 1)
    theirs = make(tmp_path, 2, fingerprint="theirs")
    started = make(tmp_path, 3, committed=False, marker=STARTED)  # an interrupted save of this run
    started_theirs = make(tmp_path, 4, fingerprint="theirs", committed=False, marker=STARTED)
    bare = make(tmp_path, 5, fingerprint=None)  # no marker at all
    torn = make(tmp_path, 6, fingerprint=None)
    (torn / STATE).write_text('{"run_finger')
    (torn / STARTED).write_text(json.dumps({"run_fingerprint": "mine"}))  # the state is torn: the start marker says
    c = Checkpoints(tmp_path, "mine")
    assert [c.ours(t) for t in (mine, theirs, started, started_theirs, bare, torn)] == [
        True, False, True, False, False, True]
    assert [p.name for p in c.foreign()] == [tag(5), tag(4), tag(2)]


def test_kept(tmp_path):
    c = Checkpoints(tmp_path, "mine")
    assert c.kept() == "no checkpoint was committed before it"
    make(tmp_path, 4)
    (tmp_path / "checkpoints" / POINTER).write_text(tag(4) + "\n")
    assert c.kept() == f"{tmp_path / 'checkpoints' / tag(4)} stays the latest checkpoint"


def test_last_committed(tmp_path):
    c = Checkpoints(tmp_path, "mine")
    assert c.last_committed() is None
    make(tmp_path, 2)
    make(tmp_path, 4)
    newest_uncommitted = make(tmp_path, 6, committed=False)
    assert c.last_committed() == tmp_path / "checkpoints" / tag(4)
    assert c.last_committed(besides=tmp_path / "checkpoints" / tag(4)) == tmp_path / "checkpoints" / tag(2)
    assert newest_uncommitted.exists()


def checkpointer(root: Path, save_steps: int = 5, limit: int | None = None, milestone: int | None = None):
    return Checkpointer(Checkpoints(root, "mine"), {}, save_steps=save_steps, limit=limit, milestone=milestone)


def test_should_save(tmp_path):
    c = checkpointer(tmp_path, save_steps=5)
    assert [s for s in range(1, 21) if c.should_save(s, 20)] == [5, 10, 15]  # the end saves step 20
    assert [s for s in range(1, 23) if c.should_save(s, 22)] == [5, 10, 15, 20]
    never = checkpointer(tmp_path, save_steps=0)
    assert [s for s in range(1, 21) if never.should_save(s, 20)] == []


def names(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "checkpoints").iterdir())


def rotation_fixture(root: Path) -> None:
    for step in (2, 4, 6, 8, 10):
        make(root, step)
    make(root, 5, committed=False)  # this run's interrupted save
    make(root, 12, committed=False, marker=STARTED)  # a later interrupted save
    make(root, 14)  # a timeline abandoned by resuming from step 10
    make(root, 3, fingerprint="theirs")
    make(root, 16, fingerprint="theirs")
    make(root, 7, fingerprint="theirs", committed=False, marker=STARTED)
    make(root, 9, fingerprint=None)  # nobody's
    (root / "checkpoints" / POINTER).write_text(tag(10))
    (root / "checkpoints" / "notes.txt").write_text("mine")
    (root / "checkpoints" / "keep-me").mkdir()


OTHERS = ["keep-me", "latest", "notes.txt", tag(16), tag(3), tag(7), tag(9)]


def test_rotate_keeps_the_newest_and_milestones(tmp_path):
    rotation_fixture(tmp_path)
    checkpointer(tmp_path, limit=2, milestone=4).rotate(10)
    assert names(tmp_path) == sorted([tag(10), tag(8), tag(4), *OTHERS])
    assert (tmp_path / "checkpoints" / "notes.txt").read_text() == "mine"


def test_rotate_without_a_limit(tmp_path):
    rotation_fixture(tmp_path)
    checkpointer(tmp_path).rotate(10)  # every committed one up to 10 stays; the leftovers go
    assert names(tmp_path) == sorted([tag(2), tag(4), tag(6), tag(8), tag(10), *OTHERS])


def test_rotate_limit_one(tmp_path):
    rotation_fixture(tmp_path)
    checkpointer(tmp_path, limit=1).rotate(10)
    assert names(tmp_path) == sorted([tag(10), *OTHERS])


def test_rotate_never_removes_current(tmp_path):
    make(tmp_path, 2)
    make(tmp_path, 4, committed=False)  # current, as rotate sees it: kept whatever its state
    checkpointer(tmp_path, limit=1).rotate(4)
    assert names(tmp_path) == [tag(2), tag(4)]


def draws() -> tuple:
    return (random.random(), random.gauss(0, 1), np.random.standard_normal(2).tolist(), np.random.randint(1 << 30),
            torch.rand(3).tolist(), torch.randn(2).tolist())


def test_rng_state_round_trip(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached second normal in python's generator
    np.random.standard_normal()  # and in numpy's
    state = checkpoint.rng_state()
    first = draws()
    checkpoint.set_rng_state(state)
    assert draws() == first
    # as a checkpoint stores it: torch.save, then loaded with weights_only as resume() does
    torch.save(state, tmp_path / "rng_state_00000.pt")
    draws()
    checkpoint.set_rng_state(torch.load(tmp_path / "rng_state_00000.pt", weights_only=True))
    assert draws() == first


def test_estimate_line(tmp_path):
    # 1M params: 12 bytes each (fp32 weights and Adam's two moments), 16 with mixed precision's master weights
    assert estimate_line(tmp_path, 1_000_000, False, 3) == (
        f"checkpoints: ~11.4 MiB each, at most 3 + 1 while saving = 45.8 MiB (plus milestones, --save_total_limit 3), "
        f"in {tmp_path}")
    assert estimate_line(tmp_path, 1_000_000, True, 0) == (
        f"checkpoints: ~15.3 MiB each, --save_total_limit 0: every one kept, unbounded, in {tmp_path}")


def test_figures_before_any_save(tmp_path):
    assert checkpointer(tmp_path).figures() == {"checkpoint/save_seconds": None, "checkpoint/size_mb": 0.0}


# ---- finding the checkpoint to resume from (one process: the collectives are local)

def commit_manifest(tag_dir: Path) -> None:
    from dslm.manifest import MANIFEST, entries_together

    files, problem = entries_together(tag_dir)
    assert problem is None
    (tag_dir / MANIFEST).write_text(json.dumps({"files": files}))


def test_latest_skips_foreign_uncommitted_and_damaged(tmp_path):
    for step in (2, 4):
        commit_manifest(make(tmp_path, step))
    damaged = make(tmp_path, 6)
    (damaged / "mp_rank_00_model_states.pt").write_bytes(b"w" * 64)
    commit_manifest(damaged)
    (damaged / "mp_rank_00_model_states.pt").write_bytes(b"w" * 10)  # truncated
    commit_manifest(make(tmp_path, 8, fingerprint="theirs"))
    make(tmp_path, 10, committed=False)
    warnings: list[str] = []
    found = Checkpoints(tmp_path, "mine", warn=warnings.append).latest()
    assert found is not None
    assert found.path == tmp_path / "checkpoints" / tag(4)
    assert found.state == {"run_fingerprint": "mine", "step": 4}
    root = tmp_path / "checkpoints"
    assert warnings == [
        f"skipping checkpoint {root / tag(8)}: it belongs to another run (different model, data or seed)",
        f"skipping checkpoint {root / tag(6)}: mp_rank_00_model_states.pt has 10 bytes, the manifest says 64"]


def test_find(tmp_path):
    good = make(tmp_path, 2)
    commit_manifest(good)
    c = Checkpoints(tmp_path, "mine")
    assert c.find("none", overwrite=False) is None
    assert c.find("auto", overwrite=True) is None
    assert c.find("auto", overwrite=False).path == good
    assert c.find(str(good), overwrite=False).path == good
    (good / COMMIT).unlink()
    assert c.find("auto", overwrite=False) is None
    with pytest.raises(ConfigError) as err:
        c.find(str(good), overwrite=False)
    assert str(err.value) == f"--resume_from_checkpoint {good}: no commit marker (the save did not finish)"
