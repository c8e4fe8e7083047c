"""The output directory's policy: refuse a previous run, resume it, or clear it once the new run is ready."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dslm import outdir
from dslm.checkpoint import Checkpoints, Found
from dslm.config import RunConfig
from dslm.errors import ConfigError

FINGERPRINT = "this-run"


def check(out: Path, fingerprint: str = FINGERPRINT, **flags) -> None:
    outdir.check(RunConfig.from_flags(output_dir=str(out), **flags), fingerprint)


def refused(out: Path, fingerprint: str = FINGERPRINT, **flags) -> str:
    with pytest.raises(ConfigError) as err:
        check(out, fingerprint, **flags)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_fresh_directory_passes(tmp_path):
    check(tmp_path / "new" / "out")  # not there yet
    (tmp_path / "empty").mkdir()
    check(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not a run output")
    check(tmp_path / "other")
    assert not (tmp_path / "new").exists()  # checking writes nothing that stays
    assert [p.name for p in (tmp_path / "empty").iterdir()] == []


def test_previous_run_is_refused(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    assert refused(tmp_path) == (f"--output_dir {tmp_path} already holds a run (metrics.jsonl): pass "
                                 f"--overwrite_output_dir to start over, or choose another --output_dir")


def test_refusal_names_every_output(tmp_path):
    for name in ("run_config.json", "results.json", "metrics.jsonl"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "final").mkdir()
    (tmp_path / "checkpoints").mkdir()  # empty: nothing to resume
    assert refused(tmp_path).startswith(f"--output_dir {tmp_path} already holds a run (checkpoints, final, "
                                        f"metrics.jsonl, results.json, run_config.json): pass --overwrite_output_dir")


def test_checkpoints_resume_by_default(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    (tmp_path / "checkpoints" / "step-00000002").mkdir(parents=True)
    check(tmp_path)  # resume auto
    assert refused(tmp_path, resume_from_checkpoint="none") == (
        f"--output_dir {tmp_path} already holds a run (checkpoints, metrics.jsonl): pass --resume_from_checkpoint "
        f"auto to continue it, --overwrite_output_dir to start over, or choose another --output_dir")


def test_overwrite_passes(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    (tmp_path / "final").mkdir()
    check(tmp_path, overwrite_output_dir=True)
    check(tmp_path, overwrite_output_dir=True, resume_from_checkpoint="none")
    assert (tmp_path / "metrics.jsonl").read_text() == "{}\n"  # nothing is removed yet


def test_a_file_is_refused(tmp_path):
    out = tmp_path / "out"
    out.write_text("x")
    assert refused(out) == f"--output_dir {out} is a file: choose a directory"


def test_resume_from_a_directory_that_is_no_checkpoint(tmp_path):
    ckpt = tmp_path / "out" / "checkpoints" / "step-00000002"
    ckpt.mkdir(parents=True)
    assert refused(tmp_path / "out", resume_from_checkpoint=str(ckpt)) == (
        f"--resume_from_checkpoint {ckpt}: not a dslm checkpoint; give a directory under OUTPUT_DIR/checkpoints, or "
        f"auto, or none")
    (ckpt / "dslm_state.json").write_text("{}")
    (tmp_path / "out" / "metrics.jsonl").write_text("{}\n")
    check(tmp_path / "out", resume_from_checkpoint=str(ckpt))  # an explicit checkpoint continues its run


def make_run_outputs(out: Path) -> None:
    for name in outdir.RUN_OUTPUTS:
        if name in ("checkpoints", "final"):
            (out / name / "sub").mkdir(parents=True)
            (out / name / "sub" / "file").write_text("x")
        else:
            (out / name).write_text("{}")
    (out / "notes.txt").write_text("mine")
    (out / "cache").mkdir()
    (out / "wandb_run_id").write_text("abc")


def test_clear_previous_run_keeps_checkpoints(tmp_path):
    make_run_outputs(tmp_path)
    outdir.clear_previous_run(tmp_path, checkpoints=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "checkpoints", "notes.txt", "wandb_run_id"]
    assert (tmp_path / "checkpoints" / "sub" / "file").read_text() == "x"


def test_clear_previous_run_with_checkpoints(tmp_path):
    make_run_outputs(tmp_path)
    outdir.clear_previous_run(tmp_path, checkpoints=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "notes.txt", "wandb_run_id"]
    outdir.clear_previous_run(tmp_path, checkpoints=True)  # nothing left to clear: no error


def foreign_checkpoint(out: Path, marker: str = "dslm_state.json") -> Path:
    tag_dir = out / "checkpoints" / "step-00000002"
    tag_dir.mkdir(parents=True)
    (tag_dir / marker).write_text(json.dumps({"run_fingerprint": "another-run"}))
    return tag_dir


def test_refuse_foreign(tmp_path):
    foreign_checkpoint(tmp_path)
    checkpoints = Checkpoints(tmp_path, "this-run")
    with pytest.raises(ConfigError) as err:
        outdir.refuse_foreign(checkpoints, found=None, overwrite=False)
    assert str(err.value) == (f"{tmp_path / 'checkpoints'} holds checkpoints of another run (step-00000002: "
                              f"different model, data or seed): use another --output_dir, or --overwrite_output_dir "
                              f"to replace them")
    outdir.refuse_foreign(checkpoints, found=None, overwrite=True)
    outdir.refuse_foreign(checkpoints, found=Found(tmp_path / "x", {}), overwrite=False)  # resuming: no fresh save


def test_refuse_foreign_started_marker_and_own_checkpoints(tmp_path):
    foreign_checkpoint(tmp_path, marker="dslm_started.json")  # an interrupted save of another run
    with pytest.raises(ConfigError):
        outdir.refuse_foreign(Checkpoints(tmp_path, "this-run"), found=None, overwrite=False)
    outdir.refuse_foreign(Checkpoints(tmp_path, "another-run"), found=None, overwrite=False)
    outdir.refuse_foreign(Checkpoints(tmp_path / "nothing", "this-run"), found=None, overwrite=False)


def test_the_same_run_killed_before_its_first_checkpoint_starts_again_and_another_is_refused(tmp_path):
    """run_config.json, ds_config.json and metrics.jsonl are written before the first commit: the identity file
    tells the same command (the same fingerprint) from another run's."""
    (tmp_path / "run_config.json").write_text("{}")
    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\n')
    assert "already holds a run" in refused(tmp_path)  # no identity: as before
    outdir.claim(tmp_path, FINGERPRINT)
    assert outdir.identity(tmp_path) == FINGERPRINT
    check(tmp_path)  # the same run: allowed, it starts again from step 0
    assert "already holds a run (metrics.jsonl, run_config.json, dslm_run.json)" in refused(tmp_path, "another-run")
    assert "already holds a run" in refused(tmp_path, resume_from_checkpoint="none")  # a fresh start is asked for


def test_only_an_identity_left_by_a_run_killed_at_once_still_names_it(tmp_path):
    outdir.claim(tmp_path, "another-run")
    assert refused(tmp_path).startswith(f"--output_dir {tmp_path} already holds a run (dslm_run.json)")
