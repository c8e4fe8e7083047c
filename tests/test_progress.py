"""Progress: the record a checkpoint saves and a resume restores whole."""

from __future__ import annotations

import json

from dslm.progress import Progress


def test_round_trip():
    p = Progress(step=12, epoch=1, samples=96, samples_in_epoch=16, tokens_seen=12288, skipped_steps=2)
    d = p.to_dict()
    assert d == {"step": 12, "epoch": 1, "samples": 96, "samples_in_epoch": 16, "tokens_seen": 12288,
                 "skipped_steps": 2, "tokens_by_source": {}}
    mixed = Progress(step=3, tokens_by_source={"legal": 640, "replay": 128})
    assert Progress.from_dict(json.loads(json.dumps(mixed.to_dict()))) == mixed
    assert Progress.from_dict(d) == p
    assert Progress.from_dict(json.loads(json.dumps(d))) == p  # as dslm_state.json holds it


def test_defaults_are_zero():
    assert Progress().to_dict() == {"step": 0, "epoch": 0, "samples": 0, "samples_in_epoch": 0, "tokens_seen": 0,
                                    "skipped_steps": 0, "tokens_by_source": {}}


def test_from_a_checkpoint_state_with_more_keys():
    state = {"step": 5, "epoch": 0, "samples": 40, "samples_in_epoch": 40, "tokens_seen": 5120, "skipped_steps": 0,
             "world_size": 2, "zero_stage": 2, "run_fingerprint": "abc", "config": {"train": {"seed": 1}}}
    assert Progress.from_dict(state) == Progress(step=5, samples=40, samples_in_epoch=40, tokens_seen=5120)


def test_missing_fields_start_at_zero():
    # A state written before a field existed (e.g. without skipped_steps or samples_in_epoch).
    assert Progress.from_dict({"step": 7, "samples": 56, "zero_stage": 3}) == Progress(step=7, samples=56)
    assert Progress.from_dict({}) == Progress()


def test_values_become_ints():
    p = Progress.from_dict({"step": 3.0, "tokens_seen": "100"})
    assert p == Progress(step=3, tokens_seen=100)
    assert type(p.step) is int and type(p.tokens_seen) is int
