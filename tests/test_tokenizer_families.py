"""A tokenizer of each family's own kind for any model type, and the config ids that go with it.

Every family dslm knows, an unknown causal family (falcon; phi3, whose config's pad id 32000 lies past a
small vocabulary) and an unknown encoder (eurobert): the kind and special tokens, what encoding adds, ids
that do not change between trainings, and a tiny model built from scratch that runs on the encoded text.
"""

from __future__ import annotations

import functools
import json
import random

import numpy as np
import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    DataCollatorForLanguageModeling,
    PreTrainedTokenizerBase,
)

from dslm import tokenizer
from dslm.data.sources import builtin_texts

TEXT = "The assert statement checks a condition."
END = "<|endoftext|>"
LLAMA = {"class": "LlamaTokenizer", "model": "BPE", "bos": "<s>", "eos": "</s>", "unk": "<unk>", "head": ["<s>"]}
QWEN = {"class": "Qwen2Tokenizer", "model": "BPE", "eos": END, "unk": END, "pad": END}
GPT2_KIND = {"class": "GPT2Tokenizer", "model": "BPE", "bos": END, "eos": END, "unk": END}
BERT_KIND = {"model": "WordPiece", "unk": "[UNK]", "pad": "[PAD]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]",
             "head": ["[CLS]"], "tail": ["[SEP]"]}
# family -> objective, expected kind: tokenizer class, model type, special tokens (absent: none), the tokens
# that encoding adds before and after the text (absent: none), whether token_type_ids come out.
FAMILIES = {
    "bert": ("mlm", {**BERT_KIND, "class": "BertTokenizer", "type_ids": True}),
    "distilbert": ("mlm", {**BERT_KIND, "class": "DistilBertTokenizer"}),
    "roberta": ("mlm", {"class": "RobertaTokenizer", "model": "BPE", "bos": "<s>", "eos": "</s>", "unk": "<unk>",
                        "pad": "<pad>", "cls": "<s>", "sep": "</s>", "mask": "<mask>",
                        "head": ["<s>"], "tail": ["</s>"]}),
    "gpt2": ("clm", {**GPT2_KIND, "pad": END}),  # GPT-2 alone pads with end-of-text
    "xlnet": ("plm", {"class": "XLNetTokenizer", "model": "Unigram", "bos": "<s>", "eos": "</s>", "unk": "<unk>",
                      "pad": "<pad>", "cls": "<cls>", "sep": "<sep>", "mask": "<mask>", "tail": ["<sep>", "<cls>"]}),
    "llama": ("clm", LLAMA),
    "mistral": ("clm", LLAMA),
    "qwen2": ("clm", QWEN),
    "qwen3": ("clm", QWEN),
    "gpt_neox": ("clm", {**GPT2_KIND, "class": "GPTNeoXTokenizer", "pad": "<|padding|>"}),
    "modernbert": ("mlm", {"class": "TokenizersBackend", "model": "BPE", "unk": "[UNK]", "pad": "[PAD]",
                           "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]", "head": ["[CLS]"], "tail": ["[SEP]"]}),
    "falcon": ("clm", GPT2_KIND),  # unknown causal families: GPT-2's kind, no pad
    "phi3": ("clm", GPT2_KIND),
    "eurobert": ("mlm", {**BERT_KIND, "class": "BertTokenizer"}),  # unknown encoder: BERT's kind
}
SPECIALS = ("bos", "eos", "unk", "pad", "cls", "sep", "mask")

# hidden 32, 2 layers, 2 heads, FFN 64, in each config's own names
BERT_SIZE = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
LLAMA_SIZE = {**BERT_SIZE, "num_key_value_heads": 1}
TINY = {
    "bert": BERT_SIZE, "roberta": BERT_SIZE, "modernbert": BERT_SIZE, "gpt_neox": BERT_SIZE,
    "distilbert": {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64},
    "gpt2": {"n_embd": 32, "n_layer": 2, "n_head": 2},
    "xlnet": {"d_model": 32, "n_layer": 2, "n_head": 2, "d_inner": 64},
    "llama": LLAMA_SIZE, "mistral": LLAMA_SIZE, "qwen2": LLAMA_SIZE, "qwen3": LLAMA_SIZE, "phi3": LLAMA_SIZE,
    "eurobert": LLAMA_SIZE,
    "falcon": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "ffn_hidden_size": 64},
}


def corpus() -> list[list[str]]:
    return [builtin_texts()[:40]]


@functools.cache
def trained(family: str) -> PreTrainedTokenizerBase:
    return tokenizer.train(family, iter(corpus()), vocab_size=500, objective=FAMILIES[family][0])


def model_type(tok: PreTrainedTokenizerBase) -> str:
    return json.loads(tok.backend_tokenizer.to_str())["model"]["type"]


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_gets_its_kind_and_special_tokens(family):
    tok, want = trained(family), FAMILIES[family][1]
    assert type(tok).__name__ == want["class"]
    assert model_type(tok) == want["model"]
    assert {s: getattr(tok, f"{s}_token") for s in SPECIALS} == {s: want.get(s) for s in SPECIALS}
    enc = tok(TEXT)
    plain = tok(TEXT, add_special_tokens=False)["input_ids"]
    head, tail = want.get("head", []), want.get("tail", [])
    assert tok.convert_ids_to_tokens(enc["input_ids"]) == head + tok.convert_ids_to_tokens(plain) + tail
    assert ("token_type_ids" in enc) is want.get("type_ids", False)
    assert 400 <= len(tok) <= 500


def test_masked_tokenizers_have_a_mask_token():
    for family, (objective, _) in FAMILIES.items():
        if objective == "mlm":
            assert trained(family).mask_token_id is not None, family


def test_llama_keeps_its_convention():
    """Pieces inside words (as SentencePiece learns them), BOS added, no pad token, and byte fallback
    that works: a character never seen in training becomes its UTF-8 bytes, not <unk>."""
    tok = trained("llama")
    assert tok.pad_token is None and tok.pad_token_id is None
    assert not [piece for piece in tok.get_vocab() if "▁" in piece[1:]]
    assert tok.convert_ids_to_tokens(list(range(3, 6))) == ["<0x00>", "<0x01>", "<0x02>"]
    text = "naïve 日本語 🙂"
    ids = tok(text)["input_ids"]
    assert tok.unk_token_id not in ids and "<0xE6>" in tok.convert_ids_to_tokens(ids)
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_qwen2_pads_with_end_of_text():
    tok = trained("qwen2")
    assert tok.eos_token_id == tok.pad_token_id == tok.convert_tokens_to_ids(END)
    assert tok.bos_token is None


def test_modernbert_masks_whole_words():
    """Offsets without the leading space: whole-word masking tells words apart by gaps between offsets."""
    tok = trained("modernbert")
    enc = tok("statement condition", return_offsets_mapping=True, return_special_tokens_mask=True)
    assert len(enc["input_ids"]) > 4  # each word in several pieces
    word_ids, _ = DataCollatorForLanguageModeling._calc_word_ids_and_prob_mask(
        np.array([enc["offset_mapping"]]), np.array([enc["special_tokens_mask"]]))
    assert sorted(set(word_ids[0].tolist())) == [-1, 1, 2]
    # [MASK] takes the space before it, as RoBERTa's <mask> does: "a [MASK]" masks the word after "a"
    assert tok.convert_ids_to_tokens(tok("a [MASK] b")["input_ids"]) == ["[CLS]", "a", "[MASK]", "Ġb", "[SEP]"]


@pytest.mark.parametrize("family, like", [("mixtral", "mistral"), ("qwen2_moe", "qwen2"), ("qwen3_moe", "qwen3")])
def test_mixtures_of_experts_share_their_family_kind(family, like):
    tok = tokenizer.train(family, iter(corpus()), vocab_size=500)
    assert tokenizer.fingerprint(tok) == tokenizer.fingerprint(trained(like))
    ids = tokenizer.config_ids(tok, AutoConfig.for_model(family))
    assert ids == tokenizer.config_ids(tok, AutoConfig.for_model(like))


def test_the_kind_follows_the_family():
    """An encoder gets BERT's kind whatever the objective (as BERT itself does); other families GPT-2's."""
    assert tokenizer.kind_for("electra", "clm") is tokenizer.MASKED
    assert tokenizer.kind_for("falcon", "clm") is tokenizer.kind_for("falcon") is tokenizer.CAUSAL
    assert tokenizer.kind_for("falcon", "mlm") is tokenizer.MASKED
    assert tokenizer.kind_for("xlnet", "plm") is tokenizer.FAMILY_TOKENIZERS["xlnet"]


@pytest.mark.parametrize("family", ["bert", "llama", "modernbert", "xlnet"])
def test_training_again_gives_the_same_ids(family):
    """WordPiece, BPE with byte fallback, byte-level BPE and Unigram. WordPiece breaks tied merges in hash
    order, so it repeats only where no tie matters: it does on these 40 texts at 500 tokens (not at 600);
    the next test checks the renumbering that every WordPiece and Unigram vocabulary goes through."""
    vocabularies = [tokenizer.train(family, iter(corpus()), 500).get_vocab() for _ in range(3)]
    assert vocabularies[0] == vocabularies[1] == vocabularies[2]


def test_canonical_ids_undo_a_hash_order_numbering():
    spec = json.loads(trained("bert").backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    fixed = {t["id"] for t in spec["added_tokens"]}
    free = [i for i in vocab.values() if i not in fixed]
    shuffled = free[:]
    random.Random(0).shuffle(shuffled)
    renumber = dict(zip(free, shuffled, strict=True))
    scrambled = json.loads(json.dumps(spec))
    scrambled["model"]["vocab"] = {tok: renumber.get(i, i) for tok, i in vocab.items()}
    assert scrambled["model"]["vocab"] != vocab
    assert tokenizer.canonical_ids(scrambled)["model"]["vocab"] == vocab


@pytest.mark.parametrize("family", FAMILIES)
def test_config_ids_fit_the_vocabulary_and_the_model_runs(family):
    tok, objective = trained(family), FAMILIES[family][0]
    config = AutoConfig.for_model(family, **TINY[family])
    ids = tokenizer.config_ids(tok, config)
    assert ids, f"{family}: a config has at least one special-token id"
    for name, token_id in ids.items():
        assert hasattr(config, name)
        own = getattr(tok, name)
        if name == "pad_token_id" and own is not None and own in (tok.eos_token_id, tok.bos_token_id):
            assert token_id is None  # shared with end-of-text: not a padding_idx
        else:
            assert token_id == own
        assert token_id is None or 0 <= token_id < len(tok)
    config.vocab_size = len(tok)
    for name, token_id in ids.items():
        setattr(config, name, token_id)
    for name in tokenizer.CONFIG_TOKENS:  # no id left from the real checkpoint's vocabulary
        token_id = getattr(config, f"{name}_token_id", None)
        assert token_id is None or token_id < len(tok), f"{family} {name}_token_id {token_id}"
    auto = AutoModelForMaskedLM if objective == "mlm" else AutoModelForCausalLM
    torch.manual_seed(0)
    model = auto.from_config(config).eval()
    enc = tok(TEXT, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits
    assert logits.shape == (1, enc["input_ids"].shape[1], len(tok))
    assert torch.isfinite(logits).all()


def test_config_ids_by_family():
    """What each config gets: Llama its bos/eos and no pad, Qwen2 its eos (pad shares it), ModernBERT its
    cls/sep/pad and no bos/eos (its tokenizer has none), BERT its pad only, GPT-2 bos/eos."""
    def ids(family: str) -> dict:
        return tokenizer.config_ids(trained(family), AutoConfig.for_model(family))

    llama, qwen, modern, bert = trained("llama"), trained("qwen2"), trained("modernbert"), trained("bert")
    assert ids("llama") == {"pad_token_id": None, "bos_token_id": llama.bos_token_id,
                            "eos_token_id": llama.eos_token_id}
    assert ids("qwen2") == {"pad_token_id": None, "bos_token_id": None, "eos_token_id": qwen.eos_token_id}
    assert ids("modernbert") == {"pad_token_id": modern.pad_token_id, "bos_token_id": None, "eos_token_id": None,
                                 "cls_token_id": modern.cls_token_id, "sep_token_id": modern.sep_token_id}
    assert ids("bert") == {"pad_token_id": bert.pad_token_id, "bos_token_id": None, "eos_token_id": None}
    end = trained("gpt2").eos_token_id
    assert ids("gpt2") == {"pad_token_id": None, "bos_token_id": end, "eos_token_id": end}
