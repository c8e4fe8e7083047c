"""Tiny Hugging Face model directories that stand in for the hub's checkpoints in tests.

`make(family, path)` writes what `from_pretrained` reads: config.json, model.safetensors (random weights, well
under a million parameters) and a tokenizer trained here on the pydoc topics every Python install carries.
Each tokenizer is built by the transformers class the real checkpoint uses and carries that checkpoint's
conventions: where the special tokens sit, which ones it adds, whether it has a pad token, which side it pads,
which inputs it returns. A tool that trains on these directories meets the same surprises as on the real ones.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers.models import BPE
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    BertConfig,
    BertTokenizer,
    DistilBertConfig,
    DistilBertTokenizer,
    GPT2Config,
    GPT2Tokenizer,
    LlamaConfig,
    LlamaTokenizer,
    MistralConfig,
    ModernBertConfig,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2Tokenizer,
    RobertaConfig,
    RobertaTokenizer,
    XLNetConfig,
    XLNetLMHeadModel,
    XLNetTokenizer,
)

FAMILIES = ("bert", "roberta", "distilbert", "gpt2", "xlnet", "llama", "qwen2", "mistral", "modernbert")
OBJECTIVE = {
    "bert": "mlm", "roberta": "mlm", "distilbert": "mlm", "modernbert": "mlm",
    "gpt2": "clm", "llama": "clm", "qwen2": "clm", "mistral": "clm",
    "xlnet": "plm",
}
POSITIONS = 128  # tokens a sequence may hold; RoBERTa's config says 130 for it, as the real one says 514 for 512
VOCAB = 800
SEED = 0
# Only 40 topics: Unigram training takes ~1 s on all of them and ~0.25 s on these.
TOPICS = 40
HIDDEN, LAYERS, HEADS, INNER = 32, 2, 2, 64


def corpus() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)[:TOPICS]]


def _train(pipeline: Tokenizer, trainer: trainers.Trainer) -> dict:
    """The trained model's JSON (vocab, merges), learned through `pipeline`'s normalizer and pre-tokenizer."""
    pipeline.train_from_iterator(corpus(), trainer)
    return json.loads(pipeline.to_str())["model"]


def _pipeline_of(tokenizer: PreTrainedTokenizerBase) -> Tokenizer:
    """A copy of the class's own backend, so training sees text exactly as the class will encode it."""
    return Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())


def _merges(model: dict) -> list[tuple[str, str]]:
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]


def _byte_bpe(pipeline: Tokenizer, specials: list[str], size: int) -> dict:
    # All 256 byte symbols in the vocabulary, as GPT-2's: no text ever needs an unknown token.
    trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    return _train(pipeline, trainer)


def _canonical_wordpiece(vocab: dict[str, int], reserved: list[str]) -> dict[str, int]:
    """The WordPiece trainer numbers subword pieces in hash order, which changes per process; numbering the
    learned tokens by text makes the ids repeatable (WordPiece matches longest strings: ids don't matter)."""
    assert [tok for tok, _ in sorted(vocab.items(), key=lambda kv: kv[1])[:len(reserved)]] == reserved
    learned = sorted(tok for tok in vocab if tok not in set(reserved))
    return {tok: i for i, tok in enumerate(reserved + learned)}


def _canonical_unigram(pieces: list[list], reserved: int) -> list[tuple[str, float]]:
    """Unigram's EM sums floats in thread order (scores differ in their last bits) and spreads rare characters
    over scores 1e-4 apart in hash order. Runs of scores closer than 2e-4 form groups; inside a group the
    pieces are ordered by text and take the group's rounded scores from high to low, the same every run."""
    fixed = [(p, s) for p, s in pieces[:reserved]]  # the trainer puts the special tokens first, in order
    learned = sorted(((p, round(s, 6)) for p, s in pieces[reserved:]), key=lambda ps: -ps[1])
    groups: list[list[tuple[str, float]]] = []
    for piece in learned:
        if groups and groups[-1][-1][1] - piece[1] < 2e-4:
            groups[-1].append(piece)
        else:
            groups.append([piece])
    ordered = [(name, score) for group in groups
               for name, score in zip(sorted(p for p, _ in group), [s for _, s in group], strict=True)]
    return fixed + ordered


# --- tokenizers, one per family -------------------------------------------------------------------------------


def _uncased_wordpiece_vocab() -> dict[str, int]:
    # bert-base-uncased's layout: [PAD]=0, [unused0..98]=1..99, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103.
    reserved = ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = trainers.WordPieceTrainer(vocab_size=1000, special_tokens=reserved, show_progress=False)
    model = _train(_pipeline_of(BertTokenizer(do_lower_case=True)), trainer)
    return _canonical_wordpiece(model["vocab"], reserved)


def bert_tokenizer() -> PreTrainedTokenizerBase:
    return BertTokenizer(vocab=_uncased_wordpiece_vocab(), do_lower_case=True, model_max_length=POSITIONS)


def distilbert_tokenizer() -> PreTrainedTokenizerBase:
    # distilbert-base-uncased shares BERT's vocabulary; its class drops token_type_ids from the inputs.
    return DistilBertTokenizer(vocab=_uncased_wordpiece_vocab(), do_lower_case=True, model_max_length=POSITIONS)


def roberta_tokenizer() -> PreTrainedTokenizerBase:
    # <s>=0, <pad>=1, </s>=2, <unk>=3 first and <mask> last, as in roberta-base's vocab.json.
    model = _byte_bpe(_pipeline_of(RobertaTokenizer()), ["<s>", "<pad>", "</s>", "<unk>"], VOCAB - 1)
    vocab = {**model["vocab"], "<mask>": len(model["vocab"])}
    return RobertaTokenizer(vocab=vocab, merges=_merges(model), model_max_length=POSITIONS,
                            mask_token=AddedToken("<mask>", lstrip=True, rstrip=False, special=True))


def gpt2_tokenizer() -> PreTrainedTokenizerBase:
    # <|endoftext|> is the last id and serves as bos, eos and unk; no pad token, nothing added when encoding.
    model = _byte_bpe(_pipeline_of(GPT2Tokenizer()), [], VOCAB - 1)
    vocab = {**model["vocab"], "<|endoftext|>": len(model["vocab"])}
    return GPT2Tokenizer(vocab=vocab, merges=_merges(model), model_max_length=POSITIONS)


def xlnet_tokenizer() -> PreTrainedTokenizerBase:
    # xlnet-base-cased's spiece.model: these nine first, in this order; the class appends <sep> <cls> and pads left.
    reserved = ["<unk>", "<s>", "</s>", "<cls>", "<sep>", "<pad>", "<mask>", "<eod>", "<eop>"]
    trainer = trainers.UnigramTrainer(vocab_size=VOCAB, special_tokens=reserved, unk_token="<unk>",
                                      show_progress=False)
    model = _train(_pipeline_of(XLNetTokenizer()), trainer)
    return XLNetTokenizer(vocab=_canonical_unigram(model["vocab"], len(reserved)), unk_id=0)


def _sentencepiece_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    # Llama 2 and Mistral: <unk>=0, <s>=1, </s>=2, then the 256 byte-fallback pieces <0x00>..<0xFF>.
    reserved = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    pipeline = _pipeline_of(LlamaTokenizer())
    # The class encodes a whole text as one piece (split=False); SentencePiece learns merges inside words.
    pipeline.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    model = _train(pipeline, trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=reserved, show_progress=False))
    return model["vocab"], _merges(model)


def llama_tokenizer() -> PreTrainedTokenizerBase:
    # Llama-2-7b-hf's tokenizer_config: adds <s> and no </s>, has no pad token and pads on the right.
    vocab, merges = _sentencepiece_bpe()
    return LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False, padding_side="right")


def mistral_tokenizer() -> PreTrainedTokenizerBase:
    # Mistral-7B-v0.1 names LlamaTokenizer too, without a padding side. (Without the mistral_common package,
    # transformers 5 loads model_type "mistral" as a plain TokenizersBackend, which pads right.)
    vocab, merges = _sentencepiece_bpe()
    return LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False)


def qwen2_tokenizer() -> PreTrainedTokenizerBase:
    # Qwen2.5 base models: the special tokens come after the byte-level vocabulary, <|endoftext|> is eos and pad,
    # there is neither bos nor unk, and the tokenizer claims a longer context than the model's positions.
    model = _byte_bpe(_pipeline_of(Qwen2Tokenizer()), [], VOCAB)
    return Qwen2Tokenizer(vocab=model["vocab"], merges=_merges(model), unk_token=None, bos_token=None,
                          additional_special_tokens=["<|im_start|>", "<|im_end|>"], model_max_length=4 * POSITIONS)


def modernbert_tokenizer() -> PreTrainedTokenizerBase:
    # ModernBERT reuses OLMo's byte-level BPE (<|endoftext|>=0, <|padding|>=1, which it does not use) and
    # appends BERT's special tokens after the vocabulary; it is saved as a plain PreTrainedTokenizerFast.
    pipeline = Tokenizer(BPE())
    pipeline.normalizer = normalizers.NFC()
    pipeline.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    pipeline.decoder = decoders.ByteLevel()
    _byte_bpe(pipeline, ["<|endoftext|>", "<|padding|>"], VOCAB)
    mask = AddedToken("[MASK]", lstrip=True, rstrip=False, special=True)
    pipeline.add_special_tokens([AddedToken(t, special=True) for t in ("[UNK]", "[CLS]", "[SEP]", "[PAD]")] + [mask])
    cls, sep = pipeline.token_to_id("[CLS]"), pipeline.token_to_id("[SEP]")
    pipeline.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:0 [SEP]:0",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(tokenizer_object=pipeline, unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", pad_token="[PAD]", mask_token=mask,
                                   model_input_names=["input_ids", "attention_mask"], model_max_length=POSITIONS,
                                   clean_up_tokenization_spaces=True)


# --- configs: tiny sizes, the real checkpoints' layout and special ids ------------------------------------------


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _decoder_sizes() -> dict:
    return dict(hidden_size=HIDDEN, intermediate_size=INNER, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                max_position_embeddings=POSITIONS)


def bert_config(tok: PreTrainedTokenizerBase) -> PreTrainedConfig:
    return BertConfig(vocab_size=len(tok), hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                      intermediate_size=INNER, max_position_embeddings=POSITIONS, pad_token_id=tok.pad_token_id)


def distilbert_config(tok: PreTrainedTokenizerBase) -> PreTrainedConfig:
    return DistilBertConfig(vocab_size=len(tok), dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=INNER,
                            max_position_embeddings=POSITIONS, pad_token_id=tok.pad_token_id)


def roberta_config(tok: PreTrainedTokenizerBase) -> PreTrainedConfig:
    # RoBERTa numbers positions from pad_token_id + 1: two more embeddings than usable positions.
    return RobertaConfig(vocab_size=len(tok), hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                         num_attention_heads=HEADS, intermediate_size=INNER, max_position_embeddings=POSITIONS + 2,
                         type_vocab_size=1, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id)


def gpt2_config(tok: PreTrainedTokenizerBase) -> PreTrainedConfig:
    return GPT2Config(vocab_size=len(tok), n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=POSITIONS,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=None)


def xlnet_config(tok: PreTrainedTokenizerBase) -> PreTrainedConfig:
    return XLNetConfig(vocab_size=len(tok), d_model=HIDDEN, n_layer=LAYERS, n_head=HEADS, d_inner=INNER,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)


def llama_config(tok: PreTrainedTokenizerBase) -> PreTrainedConfig:
    return LlamaConfig(**_decoder_sizes(), num_key_value_heads=HEADS, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id, pad_token_id=None, vocab_size=len(tok))


def mistral_config(tok: PreTrainedTokenizerBase) -> PreTrainedConfig:
    # Grouped-query attention and a sliding window shorter than a full sequence, as Mistral 7B has.
    return MistralConfig(**_decoder_sizes(), num_key_value_heads=1, sliding_window=POSITIONS // 2,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=None,
                         vocab_size=len(tok))


def qwen2_config(tok: PreTrainedTokenizerBase) -> PreTrainedConfig:
    # Qwen2.5: embeddings padded past the tokenizer's length, tied, and bos_token_id = <|endoftext|> in the
    # config although the tokenizer has no bos token.
    return Qwen2Config(**_decoder_sizes(), num_key_value_heads=1, tie_word_embeddings=True,
                       vocab_size=_round_up(len(tok), 64), bos_token_id=tok.eos_token_id,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)


def modernbert_config(tok: PreTrainedTokenizerBase) -> PreTrainedConfig:
    # ModernBERT-base's config calls [CLS] bos and [SEP] eos; local attention shorter than a full sequence.
    return ModernBertConfig(**_decoder_sizes(), local_attention=POSITIONS // 2, vocab_size=len(tok),
                            pad_token_id=tok.pad_token_id, cls_token_id=tok.cls_token_id,
                            sep_token_id=tok.sep_token_id, bos_token_id=tok.cls_token_id,
                            eos_token_id=tok.sep_token_id)


TOKENIZERS: dict[str, Callable[[], PreTrainedTokenizerBase]] = {
    "bert": bert_tokenizer, "roberta": roberta_tokenizer, "distilbert": distilbert_tokenizer,
    "gpt2": gpt2_tokenizer, "xlnet": xlnet_tokenizer, "llama": llama_tokenizer, "qwen2": qwen2_tokenizer,
    "mistral": mistral_tokenizer, "modernbert": modernbert_tokenizer,
}
CONFIGS: dict[str, Callable[[PreTrainedTokenizerBase], PreTrainedConfig]] = {
    "bert": bert_config, "roberta": roberta_config, "distilbert": distilbert_config, "gpt2": gpt2_config,
    "xlnet": xlnet_config, "llama": llama_config, "qwen2": qwen2_config, "mistral": mistral_config,
    "modernbert": modernbert_config,
}
# The class a user loads each family with: the Auto class of its objective, XLNet's LM head for PLM.
MODEL_BUILDERS: dict[str, Callable[[PreTrainedConfig], PreTrainedModel]] = {
    "mlm": AutoModelForMaskedLM.from_config, "clm": AutoModelForCausalLM.from_config, "plm": XLNetLMHeadModel}


# Where the hub's tokenizer_config.json says otherwise than transformers 5 writes: ModernBERT's names
# PreTrainedTokenizerFast, which transformers 5 has renamed TokenizersBackend.
HUB_TOKENIZER_CONFIG = {"modernbert": {"tokenizer_class": "PreTrainedTokenizerFast"}}


def _as_on_hub(family: str, path: Path) -> None:
    file = path / "tokenizer_config.json"
    if family in HUB_TOKENIZER_CONFIG:
        file.write_text(json.dumps({**json.loads(file.read_text()), **HUB_TOKENIZER_CONFIG[family]}, indent=2) + "\n")


def make(family: str, path: Path) -> Path:
    """Write a tiny `family` checkpoint (config, weights, tokenizer) into `path`; the same bytes every call."""
    if family not in TOKENIZERS:
        raise ValueError(f"unknown family {family!r}: one of {', '.join(FAMILIES)}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = TOKENIZERS[family]()
    config = CONFIGS[family](tokenizer)
    with torch.random.fork_rng(devices=[]):  # leave the caller's random state as it was
        torch.manual_seed(SEED)
        model = MODEL_BUILDERS[OBJECTIVE[family]](config)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    _as_on_hub(family, path)
    return path
