"""Slices: the cache prepared in N pieces (one machine each) reads back as the whole, or is refused."""

import json
import shutil

import pytest
from conftest import prepare_data as prepare

from dslm import model
from dslm.config import RunConfig
from dslm.data import cache, slices, units
from dslm.errors import ConfigError


def _slice(tmp_path, index, num_shards, **flags):
    flags.setdefault("output_dir", str(tmp_path / "out"))
    flags.setdefault("model_type", "bert")
    flags.setdefault("vocab_size", 500)
    config = RunConfig.from_flags(num_shards=num_shards, shard_index=index, **flags)
    spec = model.resolve(config)
    return cache.prepare_slice(config, spec.family, spec.objective, spec.tokenizer)


def _rows(prepared):
    return prepared.train["input_ids"], prepared.validation["input_ids"]


@pytest.mark.parametrize("line_by_line", [False, True])
def test_slices_read_back_as_the_whole(tmp_path, monkeypatch, line_by_line):
    monkeypatch.setattr(units, "CHUNK_BYTES", 20_000)  # slices start and end inside chunks
    flags = {"max_seq_length": 32, "line_by_line": line_by_line}
    whole = prepare(tmp_path, output_dir=str(tmp_path / "whole"), **flags)
    out = str(tmp_path / "sliced")
    records = [_slice(tmp_path, i, 3, output_dir=out, **flags) for i in (2, 0, 1)]  # any order, any machine
    assert {r["fingerprint"] for r in records} == {whole.fingerprint}
    assert sum(r["units"]["train"] for r in records) > 0
    sliced = prepare(tmp_path, output_dir=out, num_shards=3, **flags)
    assert _rows(sliced) == _rows(whole)
    found = prepare(tmp_path, output_dir=out, **flags)  # no --num_shards: the one complete set
    assert _rows(found) == _rows(whole)
    assert not (tmp_path / "sliced" / "cache" / f"tokenized-{whole.fingerprint}" / slices.name(0, 1)).exists()


def test_a_missing_slice_is_named(tmp_path):
    for i in (0, 2):
        _slice(tmp_path, i, 3, max_seq_length=32)
    with pytest.raises(ConfigError, match=r"slice\(s\) 1 of 3 are missing .*--num_shards 3 --shard_index I"):
        prepare(tmp_path, max_seq_length=32, num_shards=3)
    with pytest.raises(ConfigError, match=r"slice\(s\) 1 of 3 are missing"):
        prepare(tmp_path, max_seq_length=32)  # a partial set is not silently replaced by a build of the whole


def test_a_slice_of_another_preparation_is_refused(tmp_path):
    mine = [_slice(tmp_path, i, 2, max_seq_length=32) for i in range(2)]
    other = _slice(tmp_path, 1, 2, max_seq_length=32, output_dir=str(tmp_path / "other"),
                   validation_split_percentage=10)
    shutil.rmtree(mine[1]["path"])
    shutil.copytree(other["path"], mine[1]["path"])
    with pytest.raises(ConfigError, match="prepared with other flags or data"):
        prepare(tmp_path, max_seq_length=32, num_shards=2)
    meta_path = mine[1]["path"] / slices.META
    meta = json.loads((mine[0]["path"] / slices.META).read_text())
    meta["spans"]["train"][2] += 1  # cut from a longer version of the file
    meta.update(index=1)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="cut from another version of the data"):
        prepare(tmp_path, max_seq_length=32, num_shards=2)


def test_a_run_with_num_shards_checks_its_slices_before_writing(tmp_path):
    flags = {"max_seq_length": 32, "cache_dir": str(tmp_path / "cache")}  # no tokenizer trained yet
    config = RunConfig.from_flags(output_dir=str(tmp_path / "out"), model_type="bert", vocab_size=500,
                                  num_shards=2, **flags)
    spec = model.resolve(config)
    with pytest.raises(ConfigError, match="no slice of 2 is prepared"):
        cache.check_slices(config, spec.family, spec.objective, spec.tokenizer)
    _slice(tmp_path, 0, 2, **flags)
    with pytest.raises(ConfigError, match=r"slice\(s\) 1 of 2 are missing"):
        cache.check_slices(config, spec.family, spec.objective, spec.tokenizer)
    mine = _slice(tmp_path, 1, 2, **flags)
    cache.check_slices(config, spec.family, spec.objective, spec.tokenizer)
    other = _slice(tmp_path, 1, 2, **flags, output_dir=str(tmp_path / "other"), validation_split_percentage=10)
    shutil.rmtree(mine["path"])
    shutil.copytree(other["path"], mine["path"])
    with pytest.raises(ConfigError, match="prepared with other flags or data"):
        cache.check_slices(config, spec.family, spec.objective, spec.tokenizer)


@pytest.mark.slow  # forks the workers
def test_workers_and_slices_together_give_the_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(units, "CHUNK_BYTES", 20_000)
    whole = prepare(tmp_path, output_dir=str(tmp_path / "whole"), max_seq_length=32)
    out = str(tmp_path / "sliced")
    for i in range(2):
        _slice(tmp_path, i, 2, output_dir=out, max_seq_length=32, preprocessing_num_workers=2)
    assert _rows(prepare(tmp_path, output_dir=out, num_shards=2, max_seq_length=32)) == _rows(whole)
    files = sorted(p.name for p in (tmp_path / "sliced" / "cache").glob("tokenized-*/slice-00001-of-00002/*"))
    assert files == ["dslm_cache.json", "train-00000.arrow", "train-00001.arrow", "validation-00000.arrow",
                     "validation-00001.arrow"]


@pytest.mark.slow  # forks the workers
def test_a_failing_worker_fails_the_build_in_one_line(tmp_path, monkeypatch):
    def broken(job, span, path):
        raise ValueError("disk full")

    monkeypatch.setattr(slices, "_write_piece", broken)
    with pytest.raises(RuntimeError, match="preprocessing worker 0 failed: disk full"):
        prepare(tmp_path, max_seq_length=32, preprocessing_num_workers=2)
    assert not [p for p in (tmp_path / "out" / "cache").glob("tokenized-*/slice-*") if p.is_dir()]  # none half-built
