"""The stream: each reader its share, and a resume from any recorded position gives what followed it."""

import json

import pytest
from conftest import prepare_data as prepare

from dslm.config import RunConfig
from dslm.data import encode, stream
from dslm.data.sources import builtin_texts


def _stream(tmp_path, tokenizer, **flags):
    flags.setdefault("output_dir", str(tmp_path / "o"))
    config = RunConfig.from_flags(model_type="bert", vocab_size=500, streaming=True, max_steps=1, **flags)
    columns = encode.columns_for("mlm", whole_word_mask=False)
    return stream.StreamBlocks(config, tokenizer, columns)


def _corpus(tmp_path, suffix):
    texts = [line for text in builtin_texts()[:60] for line in text.splitlines()]
    texts[5:5] = ["", "   ", "\u00e9t\u00e9 caf\u00e9 na\u00efve"]  # empty, blank and non-ASCII lines
    path = tmp_path / f"corpus{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(texts)))
    else:
        path.write_text("\n".join(texts) + "\n")
    return path, [t for t in texts if t.strip()]


def _ids(samples):
    return [s["input_ids"] for s in samples]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return prepare(tmp_path_factory.mktemp("tok"), max_seq_length=32).tokenizer


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".csv"])
@pytest.mark.parametrize("line_by_line", [False, True])
def test_readers_share_the_stream_without_overlap(tmp_path, tokenizer, suffix, line_by_line, monkeypatch):
    if suffix == ".csv":
        path, lines = _corpus(tmp_path, ".jsonl")
        import pandas as pd

        csv = tmp_path / "corpus.csv"
        pd.read_json(path, lines=True).to_csv(csv, index=False)
        path = csv
    else:
        path, lines = _corpus(tmp_path, suffix)
    monkeypatch.setattr(stream, "BATCH_TEXTS", 17)
    s = _stream(tmp_path, tokenizer, train_file=str(path), line_by_line=line_by_line, max_seq_length=32)
    one = _ids(s._samples(0, 1, None))
    shares = [_ids(s._samples(k, 3, None)) for k in range(3)]
    if line_by_line:  # every line exactly once, over the readers together
        assert sorted(map(tuple, one)) == sorted(tuple(x) for share in shares for x in share)
        assert len(one) == len(lines)
    else:  # a reader packs its own share: the blocks differ only where the shares meet
        total = sum(len(tokenizer(t)["input_ids"]) for t in lines)
        assert len(one) == total // 32
        assert total // 32 - 3 <= sum(map(len, shares)) <= total // 32
    assert all(shares)


@pytest.mark.parametrize("line_by_line", [False, True])
@pytest.mark.parametrize("source", ["txt", "builtin", "csv", "folder"])
def test_a_resume_from_any_position_gives_what_followed(tmp_path, tokenizer, monkeypatch, line_by_line, source):
    monkeypatch.setattr(stream, "BATCH_TEXTS", 13)
    flags = {"line_by_line": line_by_line, "max_seq_length": 32}
    if source == "txt":
        flags["train_file"] = str(_corpus(tmp_path, ".txt")[0])
    elif source == "csv":
        import pandas as pd

        path = tmp_path / "c.csv"
        pd.DataFrame({"text": _corpus(tmp_path, ".txt")[1]}).to_csv(path, index=False)
        flags["train_file"] = str(path)
    elif source == "folder":  # a dataset of 4 files: 2 whole files per reader
        folder = tmp_path / "dataset"
        folder.mkdir()
        lines = _corpus(tmp_path, ".txt")[1]
        for i in range(4):
            (folder / f"train-{i:05d}-of-00004.jsonl").write_text(
                "".join(json.dumps({"text": t}) + "\n" for t in lines[i::4]))
        flags["dataset_name"] = str(folder)
    s = _stream(tmp_path, tokenizer, **flags)
    if source == "folder":  # each of 2 readers opens only its 2 files
        from datasets.distributed import split_dataset_by_node

        from dslm.data import sources

        assert split_dataset_by_node(sources.stream_dataset(s.config), rank=1, world_size=2).num_shards == 2
    for k, n in ((0, 1), (1, 2)):
        whole = list(s._samples(k, n, None))
        assert len(whole) > 20
        for i in (0, 1, 7, len(whole) // 2, len(whole) - 2):
            _, position = whole[i][stream.KEY]
            again = list(s._samples(k, n, json.loads(json.dumps(position))))  # through a checkpoint's JSON
            assert _ids(again) == _ids(whole[i + 1:]), (k, i)


def test_positions_are_saved_per_reader_and_a_new_reader_count_starts_the_next_pass(tmp_path, tokenizer):
    s = _stream(tmp_path, tokenizer, max_seq_length=32)
    samples = list(s._samples(0, 1, None))
    s.took(samples[3][stream.KEY])
    saved = json.loads(json.dumps(s.snapshot()))
    assert saved["readers"] == 1 and saved["states"]["0"]["taken"] >= 1
    resumed = _stream(tmp_path, tokenizer, max_seq_length=32)
    assert resumed.restore(saved) == 0
    assert _ids(iter(resumed)) == _ids(samples[4:])
    saved["readers"] = 4  # saved by a run of 4 readers: this run's shares are others
    fresh = _stream(tmp_path, tokenizer, max_seq_length=32)
    assert fresh.restore(saved) == 1 and not fresh.resume


def test_a_json_lines_stream_reads_the_column_the_cache_would(tmp_path, tokenizer):
    texts = [line for text in builtin_texts()[:20] for line in text.splitlines() if line.strip()]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"n": i, "body": t}) + "\n" for i, t in enumerate(texts)))
    s = _stream(tmp_path, tokenizer, train_file=str(path), line_by_line=True, max_seq_length=32)
    assert len(list(s._samples(0, 1, None))) == len(texts)  # the only string column, as everywhere else
