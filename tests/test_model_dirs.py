"""The tiny checkpoints of model_dirs.py load like the hub's and carry their tokenizer conventions."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from model_dirs import FAMILIES, OBJECTIVE, POSITIONS, corpus, make
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

# What a user calls: XLNet's LM head is AutoModelForCausalLM's choice for model_type xlnet.
AUTO_MODEL = {"mlm": AutoModelForMaskedLM, "clm": AutoModelForCausalLM, "plm": AutoModelForCausalLM}
# Each special id a config sets, and the tokenizer's token it must be (None: the tokenizer has none).
CONFIG_IDS: dict[str, dict[str, str | None]] = {
    "bert": {"pad_token_id": "pad_token"},
    "distilbert": {"pad_token_id": "pad_token"},
    "roberta": {"pad_token_id": "pad_token", "bos_token_id": "bos_token", "eos_token_id": "eos_token"},
    "xlnet": {"pad_token_id": "pad_token", "bos_token_id": "bos_token", "eos_token_id": "eos_token"},
    "gpt2": {"pad_token_id": None, "bos_token_id": "bos_token", "eos_token_id": "eos_token"},
    "llama": {"pad_token_id": None, "bos_token_id": "bos_token", "eos_token_id": "eos_token"},
    "mistral": {"pad_token_id": None, "bos_token_id": "bos_token", "eos_token_id": "eos_token"},
    # Qwen2.5's config repeats <|endoftext|> as bos although its tokenizer has no bos token.
    "qwen2": {"pad_token_id": "pad_token", "bos_token_id": "eos_token", "eos_token_id": "eos_token"},
    # ModernBERT's config calls [CLS] bos and [SEP] eos; its tokenizer has neither name.
    "modernbert": {"pad_token_id": "pad_token", "cls_token_id": "cls_token", "sep_token_id": "sep_token",
                   "bos_token_id": "cls_token", "eos_token_id": "sep_token"},
}
TEXT = "The quick brown fox jumps over the lazy dog."
ODD_TEXT = "Größe: 3 € ✓ naïve 東京"  # characters the corpus lacks: byte-level tokenizers still round-trip them


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Each family's directory, made once for the whole module."""
    root = tmp_path_factory.mktemp("checkpoints")
    made: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in made:
            made[family] = make(family, root / family)
        return made[family]

    return get


def tokenizer(checkpoint: Callable[[str], Path], family: str):
    return AutoTokenizer.from_pretrained(str(checkpoint(family)))


def ids(tok, text: str = TEXT, **kw) -> list[int]:
    return tok(text, **kw)["input_ids"]


def test_families_and_objectives() -> None:
    assert set(OBJECTIVE) == set(FAMILIES) and len(FAMILIES) == 9
    assert {OBJECTIVE[f] for f in FAMILIES} == {"mlm", "clm", "plm"}
    with pytest.raises(ValueError, match="unknown family"):
        make("t5", Path("unused"))


@pytest.mark.parametrize("family", FAMILIES)
def test_config_ids_match_tokenizer(checkpoint, family: str) -> None:
    tok = tokenizer(checkpoint, family)
    config = AutoConfig.from_pretrained(str(checkpoint(family)))
    assert config.vocab_size >= len(tok)
    expected = CONFIG_IDS[family]
    for attr, token in expected.items():
        want = None if token is None else tok.convert_tokens_to_ids(getattr(tok, token))
        assert getattr(config, attr, None) == want, attr
    # Every special id the config sets is checked above, and names a real token.
    set_ids = {k: v for k, v in config.to_dict().items() if k.endswith("_token_id") and v is not None}
    assert set(set_ids) <= set(expected)
    assert all(0 <= v < len(tok) for v in set_ids.values())


@pytest.mark.parametrize("family", FAMILIES)
def test_reloaded_model_runs_a_full_sequence(checkpoint, family: str) -> None:
    path = checkpoint(family)
    tok = tokenizer(checkpoint, family)
    model = AUTO_MODEL[OBJECTIVE[family]].from_pretrained(str(path)).eval()
    assert sum(p.numel() for p in model.parameters()) < 300_000
    # As long as the positions allow: RoBERTa's offset or a missing embedding would fail here.
    batch = tok(" ".join(corpus()[:2]), truncation=True, max_length=POSITIONS, return_tensors="pt")
    assert batch["input_ids"].shape == (1, POSITIONS)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (1, POSITIONS, model.config.vocab_size)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_make_is_repeatable(checkpoint, tmp_path: Path, family: str) -> None:
    """Hash-ordered trainers (WordPiece, Unigram) must not change the ids from one call to the next."""
    first, again = checkpoint(family), make(family, tmp_path / family)
    assert sorted(p.name for p in first.iterdir()) == sorted(p.name for p in again.iterdir())
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json", "model.safetensors"):
        assert (first / name).read_bytes() == (again / name).read_bytes(), name


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_uncased_wordpiece(checkpoint, family: str) -> None:
    tok = tokenizer(checkpoint, family)
    # bert-base-uncased's layout.
    assert [tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id] == [
        0, 100, 101, 102, 103]
    assert tok.convert_ids_to_tokens(1) == "[unused0]"
    assert ids(tok, "HELLO World") == ids(tok, "hello world")
    encoded = ids(tok)
    assert encoded[0] == tok.cls_token_id and encoded[-1] == tok.sep_token_id
    assert tok.backend_tokenizer.model.__class__.__name__ == "WordPiece"


def test_bert_returns_token_type_ids(checkpoint) -> None:
    assert type(tokenizer(checkpoint, "bert")).__name__ == "BertTokenizer"
    assert "token_type_ids" in tokenizer(checkpoint, "bert")(TEXT)


def test_distilbert_returns_no_token_type_ids(checkpoint) -> None:
    tok = tokenizer(checkpoint, "distilbert")
    assert type(tok).__name__ == "DistilBertTokenizer"
    assert list(tok(TEXT)) == ["input_ids", "attention_mask"]


def test_roberta(checkpoint) -> None:
    tok = tokenizer(checkpoint, "roberta")
    config = AutoConfig.from_pretrained(str(checkpoint("roberta")))
    assert [tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2, 3]
    assert tok.mask_token_id == len(tok) - 1
    assert tok.added_tokens_decoder[tok.mask_token_id].lstrip
    assert config.max_position_embeddings - 2 == POSITIONS == tok.model_max_length
    assert config.pad_token_id == 1
    encoded = ids(tok)
    assert encoded[0] == 0 and encoded[-1] == 2


def test_gpt2(checkpoint) -> None:
    tok = tokenizer(checkpoint, "gpt2")
    assert tok.pad_token is None
    assert tok.bos_token == tok.eos_token == tok.unk_token == "<|endoftext|>"
    assert tok.eos_token_id == len(tok) - 1
    assert ids(tok) == ids(tok, add_special_tokens=False)
    with pytest.raises(ValueError):  # no pad token: a batch cannot be padded until the caller picks one
        tok([TEXT, "dog"], padding=True)


def test_xlnet(checkpoint) -> None:
    tok = tokenizer(checkpoint, "xlnet")
    assert tok.convert_ids_to_tokens(list(range(9))) == [
        "<unk>", "<s>", "</s>", "<cls>", "<sep>", "<pad>", "<mask>", "<eod>", "<eop>"]
    assert tok.padding_side == "left"
    encoded = ids(tok)
    assert encoded[-2:] == [tok.sep_token_id, tok.cls_token_id]
    batch = tok([TEXT, "dog"], padding=True)["input_ids"]
    assert batch[1][0] == tok.pad_token_id and batch[1][-2:] == [tok.sep_token_id, tok.cls_token_id]
    assert tok.backend_tokenizer.model.__class__.__name__ == "Unigram"


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_llama_and_mistral(checkpoint, family: str) -> None:
    tok = tokenizer(checkpoint, family)
    assert [tok.unk_token, tok.bos_token, tok.eos_token] == ["<unk>", "<s>", "</s>"]
    assert [tok.unk_token_id, tok.bos_token_id, tok.eos_token_id] == [0, 1, 2]
    assert tok.pad_token is None
    encoded = ids(tok)
    assert encoded[0] == tok.bos_token_id and encoded[-1] != tok.eos_token_id
    assert tok.bos_token_id not in encoded[1:]
    # Byte fallback: a character the vocabulary lacks becomes its UTF-8 bytes, not <unk>.
    assert tok.convert_tokens_to_ids("<0xE2>") == 3 + 0xE2
    assert tok.unk_token_id not in ids(tok, "✓")


def test_llama_pads_right_as_llama2(checkpoint) -> None:
    assert tokenizer(checkpoint, "llama").padding_side == "right"


def test_qwen2(checkpoint) -> None:
    tok = tokenizer(checkpoint, "qwen2")
    config = AutoConfig.from_pretrained(str(checkpoint("qwen2")))
    assert tok.eos_token == tok.pad_token == "<|endoftext|>"
    assert tok.bos_token is None and tok.unk_token is None
    assert ids(tok) == ids(tok, add_special_tokens=False)
    assert {"<|im_start|>", "<|im_end|>"} <= set(tok.all_special_tokens)
    assert config.vocab_size > len(tok)  # the embeddings are padded past the tokenizer, as Qwen2.5's


def test_modernbert(checkpoint) -> None:
    path = checkpoint("modernbert")
    tok = tokenizer(checkpoint, "modernbert")
    assert json.loads((path / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tok.mask_token == "[MASK]" and tok.mask_token_id is not None
    assert tok.pad_token == "[PAD]" and tok.convert_tokens_to_ids("<|padding|>") == 1
    assert tok.backend_tokenizer.model.__class__.__name__ == "BPE"
    encoded = tok(TEXT)
    assert list(encoded) == ["input_ids", "attention_mask"]
    assert encoded["input_ids"][0] == tok.cls_token_id and encoded["input_ids"][-1] == tok.sep_token_id


@pytest.mark.parametrize("family", ["roberta", "gpt2", "qwen2", "modernbert", "llama", "mistral"])
def test_byte_level_round_trip(checkpoint, family: str) -> None:
    tok = tokenizer(checkpoint, family)
    assert tok.decode(ids(tok, ODD_TEXT, add_special_tokens=False)) == ODD_TEXT
