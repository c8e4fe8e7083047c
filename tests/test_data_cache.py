"""The tokenized cache: built once, reused while its inputs are the same, rebuilt when they change."""

import os

import pytest
from conftest import prepare_data as prepare
from transformers import AutoTokenizer

from dslm.errors import ConfigError


def test_line_by_line_keeps_non_empty_lines_truncated(tmp_path, text_file):
    prepared = prepare(tmp_path, train_file=str(text_file), line_by_line=True, max_seq_length=16,
                       validation_split_percentage=10)
    lines = [ln for ln in text_file.read_text().splitlines() if ln.strip()]
    assert len(prepared.train) + len(prepared.validation) == len(lines)
    assert max(len(r) for r in prepared.train["input_ids"]) == 16
    assert min(len(r) for r in prepared.train["input_ids"]) < 16


def test_cache_is_reused_and_rebuilt_when_inputs_change(tmp_path, text_file):
    out = tmp_path / "out"
    first = prepare(tmp_path, train_file=str(text_file), output_dir=str(out), max_seq_length=32)
    cache = out / "cache" / f"tokenized-{first.fingerprint}"
    stamp = (cache / "slice-00000-of-00001" / "dslm_cache.json").stat().st_mtime_ns
    again = prepare(tmp_path, train_file=str(text_file), output_dir=str(out), max_seq_length=32)
    assert again.fingerprint == first.fingerprint
    assert (cache / "slice-00000-of-00001" / "dslm_cache.json").stat().st_mtime_ns == stamp  # reused, not rebuilt

    longer = prepare(tmp_path, train_file=str(text_file), output_dir=str(out), max_seq_length=48)
    assert longer.fingerprint != first.fingerprint
    text_file.write_text(text_file.read_text() + "\nOne more line of text at the end.")
    edited = prepare(tmp_path, train_file=str(text_file), output_dir=str(out), max_seq_length=32)
    assert edited.fingerprint != first.fingerprint
    other_tok = prepare(tmp_path, train_file=str(text_file), output_dir=str(out), max_seq_length=32, vocab_size=450)
    assert other_tok.fingerprint != edited.fingerprint

    prepare(tmp_path, train_file=str(text_file), output_dir=str(out), max_seq_length=32, overwrite_cache=True)
    rebuilt = out / "cache" / f"tokenized-{edited.fingerprint}" / "slice-00000-of-00001" / "dslm_cache.json"
    assert rebuilt.stat().st_mtime_ns > stamp


def test_corpus_too_small_for_one_block(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("just a few words\nand a few more\n")
    with pytest.raises(ConfigError, match="fewer than one --max_seq_length block"):
        prepare(tmp_path, train_file=str(path), max_seq_length=128, validation_split_percentage=0,
                vocab_size=100)


def test_sample_limits(tmp_path):
    prepared = prepare(tmp_path, max_train_samples=10, max_eval_samples=3, max_seq_length=32)
    assert len(prepared.train) == 10 and len(prepared.validation) == 3


def test_pretrained_tokenizer_directory_is_used(tmp_path):
    first = prepare(tmp_path, max_seq_length=32)
    saved = tmp_path / "tok"
    first.tokenizer.save_pretrained(saved)
    second = prepare(tmp_path, max_seq_length=32, tokenizer_name=str(saved), output_dir=str(tmp_path / "o3"))
    assert AutoTokenizer.from_pretrained(saved).get_vocab() == second.tokenizer.get_vocab()
    assert second.fingerprint == first.fingerprint


@pytest.mark.slow  # datasets forks the workers
def test_preprocessing_workers_give_the_same_data(tmp_path):
    one = prepare(tmp_path, max_seq_length=32, output_dir=str(tmp_path / "a"))
    two = prepare(tmp_path, max_seq_length=32, output_dir=str(tmp_path / "b"), preprocessing_num_workers=2)
    assert one.train["input_ids"] == two.train["input_ids"]


def test_a_trained_tokenizer_is_reused_by_later_runs_on_the_same_corpus(tmp_path):
    first = prepare(tmp_path, max_seq_length=32, output_dir=str(tmp_path / "a"))
    second = prepare(tmp_path, max_seq_length=32, output_dir=str(tmp_path / "b"))
    assert tokenizer_fp(first) == tokenizer_fp(second)
    assert first.train["input_ids"] == second.train["input_ids"]
    moved = prepare(tmp_path, max_seq_length=32, output_dir=str(tmp_path / "c"), cache_dir=str(tmp_path / "cc"))
    assert list((tmp_path / "cc").glob("tokenizer-*")) and list((tmp_path / "cc").glob("tokenized-*"))
    assert moved.train["input_ids"]


def tokenizer_fp(prepared):
    from dslm.tokenizer import fingerprint

    return fingerprint(prepared.tokenizer)


def test_the_cache_build_restores_tokenizers_parallelism(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # as dslm's CLI sets it
    prepare(tmp_path, max_seq_length=32)
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"  # DataLoader workers forked later stay serial


def test_each_source_is_cached_on_its_own_so_a_new_weight_tokenizes_nothing(tmp_path):
    from dslm import model
    from dslm.config import RunConfig
    from dslm.data import cache
    from dslm.data.sources import builtin_texts

    texts = builtin_texts()
    (tmp_path / "a.txt").write_text("\n".join(texts[:20]))
    (tmp_path / "b.txt").write_text("\n".join(texts[20:40]))

    def prepare(weights: tuple[float, float]):
        spec = tmp_path / "spec.yaml"
        spec.write_text(f"train:\n  - {{path: {tmp_path}/a.txt, weight: {weights[0]}}}\n"
                        f"  - {{path: {tmp_path}/b.txt, weight: {weights[1]}}}\n")
        config = RunConfig.from_flags(data_spec=str(spec), model_type="bert", vocab_size=500, max_seq_length=32,
                                      output_dir=str(tmp_path / "out"))
        resolved = model.resolve(config)
        return cache.prepare_any(config, resolved.family, resolved.objective, resolved.tokenizer)

    first = prepare((0.7, 0.3))
    built = {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "cache").glob("tokenized-*/slice-*/dslm_cache.json")}
    assert len(built) == 2  # one cache per source
    second = prepare((0.2, 0.8))
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "cache").glob("tokenized-*/slice-*/dslm_cache.json")}
    assert after == built  # reused, not rebuilt
    assert second.mixture.weights == pytest.approx((0.2, 0.8)) and second.mixture.sizes == first.mixture.sizes
    assert first.tokenizer.get_vocab() == second.tokenizer.get_vocab()
    assert list(first.named) == ["a", "b"]  # each source's held-out part, named after it
