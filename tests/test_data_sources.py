"""Reading raw text: file formats, the text column, local dataset folders."""

import json

import pandas as pd
import pytest
from conftest import prepare_data as prepare

from dslm.errors import ConfigError


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".parquet"])
def test_structured_files_use_text_or_the_only_string_column(tmp_path, suffix):
    from dslm.data.sources import builtin_texts

    frame = pd.DataFrame({"body": builtin_texts()[:20], "n": range(20)})
    path = tmp_path / f"corpus{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".parquet":
        frame.to_parquet(path)
    else:
        path.write_text("\n".join(json.dumps(r) for r in frame.to_dict("records")))
    prepared = prepare(tmp_path, train_file=str(path), max_seq_length=32)
    assert len(prepared.train) > 10


def test_missing_text_column_is_named(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"a": "x", "b": "y"}\n')
    with pytest.raises(ConfigError, match="no 'text' column and 2 string columns"):
        prepare(tmp_path, train_file=str(path))
    with pytest.raises(ConfigError, match="has no column 'body'"):
        prepare(tmp_path, train_file=str(path), text_column="body")


def test_dataset_name_loads_a_local_dataset_directory(tmp_path):
    from dslm.data.sources import builtin_texts

    folder = tmp_path / "my_dataset"
    folder.mkdir()
    (folder / "train.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in builtin_texts()[:20]))
    (folder / "validation.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in builtin_texts()[20:23]))
    prepared = prepare(tmp_path, dataset_name=str(folder), max_seq_length=32)
    assert len(prepared.train) > 50 and len(prepared.validation) > 5


def test_an_edited_dataset_folder_is_prepared_again(tmp_path):
    from dslm.data.sources import builtin_texts

    folder = tmp_path / "my_dataset"
    folder.mkdir()
    (folder / "train.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in builtin_texts()[:20]))
    first = prepare(tmp_path, dataset_name=str(folder), max_seq_length=32)
    assert prepare(tmp_path, dataset_name=str(folder), max_seq_length=32).fingerprint == first.fingerprint
    (folder / "train.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in builtin_texts()[:40]))
    edited = prepare(tmp_path, dataset_name=str(folder), max_seq_length=32, tokenizer_name=None)
    assert edited.fingerprint != first.fingerprint
    assert len(edited.train) > len(first.train)


def test_the_tokenizer_sample_is_bounded_and_the_same_on_every_run():
    from datasets import Dataset

    from dslm.data.sources import Raw, builtin_texts

    raw = Raw.of(Dataset.from_dict({"text": builtin_texts()}), "text")
    sample = raw.sample(25)
    assert len(sample) == 25 and sample == raw.sample(25) and set(sample) <= set(builtin_texts())
    assert sample != builtin_texts()[:25]  # drawn from the whole corpus, not its head
    assert raw.sample(10**6) == [t for t in builtin_texts() if t.strip()]


def test_a_hub_dataset_is_keyed_by_datasets_own_identity(monkeypatch):
    import datasets

    from dslm.config import RunConfig
    from dslm.data import sources

    class Builder:
        config_id, hash = "default-abc", "h1"

    monkeypatch.setattr(datasets, "load_dataset_builder", lambda *a, **k: Builder())
    config = RunConfig.from_flags(dataset_name="someone/corpus")
    first = sources.source_fingerprint(config.data)
    Builder.config_id = "default-def"  # the hub's data files resolved to another revision
    assert sources.source_fingerprint(config.data) != first
    assert sources.content_fingerprint(config.data) == sources.content_fingerprint(config.data)


WRAPPED = ("The first paragraph is wrapped\nover two lines.\n\n"
           "The second one\nis wrapped over\nthree lines.\n\n\n"  # two blank lines
           "A third, one line.\n  \n"  # a line of spaces only
           "Last words\n")


@pytest.mark.parametrize("sample_by, documents", [
    ("line", ["The first paragraph is wrapped", "over two lines.", "The second one", "is wrapped over", "three lines.",
              "A third, one line.", "Last words"]),
    ("paragraph", ["The first paragraph is wrapped\nover two lines.", "The second one\nis wrapped over\nthree lines.",
                   "\nA third, one line.\n  \nLast words\n"]),
    ("document", [WRAPPED]),
])
def test_sample_by_decides_what_a_document_is_and_separators_fall_only_between(tmp_path, sample_by, documents):
    """datasets' text loader cuts the file (a paragraph ends at an empty line, so a line of spaces stays
    inside one); packing then puts one EOS after each document and nowhere else."""
    from conftest import prepare_data

    from dslm.config import RunConfig
    from dslm.data import encode, sources, units

    path = tmp_path / "wrapped.txt"
    path.write_text(WRAPPED)
    config = RunConfig.from_flags(train_file=str(path), sample_by=sample_by, output_dir=str(tmp_path / "out"),
                                  validation_split_percentage=0)
    raw = sources.raw_splits(config)["train"]
    counted = units.count(raw, sources.split_lines(config.data))
    got = [u for batch in counted.read(0, counted.total) for u in batch]
    assert got == documents and counted.total == len(documents)

    tokenizer = prepare_data(tmp_path, train_file=str(path), sample_by=sample_by, model_type="gpt2",
                             validation_split_percentage=0, max_seq_length=4).tokenizer
    enc = encode.Encoder(tokenizer, ["input_ids"], line_by_line=False, max_seq_length=4)
    rows = enc.rows(enc.encode(got))["input_ids"]
    eos = tokenizer.eos_token_id
    assert all(row[-1] == eos and eos not in row[:-1] for row in rows)
    assert sum(row.count(eos) for row in rows) == len(documents)


def test_line_by_line_with_paragraphs_makes_each_paragraph_an_example(tmp_path):
    from conftest import prepare_data

    path = tmp_path / "wrapped.txt"
    path.write_text(WRAPPED)
    prepared = prepare_data(tmp_path, train_file=str(path), sample_by="paragraph", line_by_line=True,
                            validation_split_percentage=0, max_seq_length=64)
    assert len(prepared.train) == 3
