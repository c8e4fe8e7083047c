"""The data spec: what a valid one gives, and each mistake as one line that names the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dslm.config import RunConfig
from dslm.data import spec
from dslm.errors import ConfigError


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    (tmp_path / "legal").mkdir()
    for i in range(3):
        (tmp_path / "legal" / f"part{i}.txt").write_text(f"legal text {i}\nmore of it\n")
    (tmp_path / "wiki.jsonl").write_text(json.dumps({"body": "general text", "id": 1}) + "\n")
    (tmp_path / "val.txt").write_text("validation text\n")
    (tmp_path / "empty.txt").write_text("")
    return tmp_path


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def load(path: str, **flags) -> spec.DataSpec:
    return spec.load(RunConfig.from_flags(data_spec=path, **flags).data)


def test_a_spec_with_a_glob_a_column_weights_and_validation_sets(corpus):
    path = write(corpus, f"""
train:
  - {{path: "{corpus}/legal/*.txt", sample_by: paragraph, weight: 7}}
  - {{name: replay, path: {corpus}/wiki.jsonl, text_column: body, weight: 3}}
when_exhausted: stop
validation:
  legal: {corpus}/val.txt
  replay: {{path: {corpus}/wiki.jsonl, text_column: body}}
""")
    got = load(path)
    assert [s.name for s in got.train] == ["legal", "replay"]  # a glob's source is named by its folder
    assert got.weights == pytest.approx([0.7, 0.3])
    assert got.train[0].sample_by == "paragraph" and got.train[1].text_column == "body"
    assert got.when_exhausted == "stop"
    assert [v.name for v in got.validation] == ["legal", "replay"]
    assert spec.files(got.train[0].path) == sorted(str(p) for p in (corpus / "legal").glob("*.txt"))


def test_json_specs_read_the_same(corpus):
    path = write(corpus, json.dumps({"train": [{"path": str(corpus / "val.txt")}]}), "spec.json")
    got = load(path)
    assert got.train[0].name == "val" and got.weights == [1.0] and got.when_exhausted == "cycle"


def test_validation_file_pairs_name_several_sets(corpus):
    cfg = RunConfig.from_flags(train_file=str(corpus / "val.txt"),
                               validation_file=f"a={corpus}/val.txt,b={corpus}/wiki.jsonl").data
    got = spec.load(cfg)
    assert [v.name for v in got.validation] == ["a", "b"] and len(got.train) == 1
    plain = RunConfig.from_flags(train_file=str(corpus / "val.txt"), validation_file=str(corpus / "val.txt")).data
    assert spec.load(plain) is None  # one unnamed file: the single-source path, unchanged


BAD = [
    ("train: [\n  {path: x.txt\n", "is not valid YAML"),
    ("{not json", "is not valid JSON"),
    ("train:\n  - {path: VAL}\ntrian: []\n", "unknown key 'trian' (did you mean 'train'?)"),
    ("train:\n  - {path: VAL, wieght: 2}\n", "unknown key 'wieght' (did you mean 'weight'?)"),
    ("train:\n  - {path: VAL, weight: 0}\n", "weight 0 must be a positive number"),
    ("train:\n  - {path: VAL, weight: -1}\n", "weight -1 must be a positive number"),
    ("train:\n  - {path: VAL, weight: lots}\n", "weight 'lots' must be a positive number"),
    ("train:\n  - {path: VAL, weight: .nan}\n", "must be a positive number"),
    ("train:\n  - {path: DIR/missing.txt}\n", "no such file"),
    ("train:\n  - {path: 'DIR/nothing/*.txt'}\n", "no file matches"),
    ("train:\n  - {path: DIR/empty.txt}\n", "is empty"),
    ("train:\n  - {path: DIR/wiki.jsonl, text_column: txt}\n", "txt"),
    ("train:\n  - {path: VAL}\n  - {path: VAL}\n", "two training sources are named 'val'"),
    ("train:\n  - {path: VAL}\nvalidation:\n  a: VAL\n  a: VAL\n", "'a' is given twice"),
    ("train:\n  - {path: VAL, dataset: wikitext}\n", "either a path (a file or a glob) or a dataset"),
    ("train: []\n", "'train' must be a non-empty list"),
    ("train:\n  - {path: VAL}\nwhen_exhausted: never\n", "when_exhausted 'never'"),
    ("train:\n  - {path: DIR/wiki.jsonl, sample_by: paragraph}\n", "sample_by paragraph applies to .txt files"),
    ("train:\n  - {path: VAL, sample_by: sentence}\n", "sample_by 'sentence'"),
    ("train:\n  - {path: VAL, name: 'a b'}\n", "the name 'a b' must be letters"),
]


@pytest.mark.parametrize("text, message", BAD, ids=[m[:40] for _, m in BAD])
def test_a_bad_spec_is_one_line_naming_the_fix(corpus, text, message):
    text = text.replace("VAL", str(corpus / "val.txt")).replace("DIR", str(corpus))
    path = write(corpus, text, "spec.json" if text.startswith("{") else "spec.yaml")
    with pytest.raises(ConfigError) as err:
        load(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_json_duplicate_keys_and_flag_conflicts(corpus):
    path = write(corpus, '{"train": [{"path": "%s"}], "train": []}' % (corpus / "val.txt"), "spec.json")
    with pytest.raises(ConfigError, match="'train' is given twice"):
        load(path)
    good = write(corpus, f"train:\n  - {{path: {corpus}/val.txt}}\n")
    with pytest.raises(ConfigError, match="--data_spec and --train_file"):
        load(good, train_file=str(corpus / "val.txt"))
    with pytest.raises(ConfigError, match="needs every source's length"):
        load(write(corpus, f"train:\n  - {{path: {corpus}/val.txt}}\nwhen_exhausted: stop\n"), streaming=True,
             max_steps=5)
    with pytest.raises(ConfigError, match="no such file"):
        load(str(corpus / "nope.yaml"))


def test_validation_pairs_that_cannot_be_used(corpus):
    val = corpus / "val.txt"
    for value, message in [(f"a={val},a={val}", "names the validation set 'a' twice"),
                           (f"a={val},{val}", "name=path pairs"), (f"a={corpus}/nope.txt", "no such file"),
                           (f"a b={val}", "must be letters")]:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
            RunConfig.from_flags(train_file=str(val), validation_file=value)


def test_sample_by_flag_is_checked(corpus):
    with pytest.raises(ConfigError, match="sample_by paragraph applies to .txt files"):
        RunConfig.from_flags(train_file=str(corpus / "wiki.jsonl"), text_column="body", sample_by="paragraph")
    with pytest.raises(ConfigError, match="sample_by 'word'"):
        RunConfig.from_flags(sample_by="word")
    with pytest.raises(ConfigError, match="--line_by_line packs nothing"):
        RunConfig.from_flags(reset_attention_mask=True, line_by_line=True)
