"""Load a tokenizer, or train one on the training corpus for a model built from scratch."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from dslm import atomic, dist
from dslm.errors import ConfigError, first_line


@dataclass(frozen=True)
class Kind:
    """One kind of tokenizer dslm trains. `make()` builds it with no vocabulary: the pipeline (normalizer,
    pre-tokenizer, model type, decoder, post-processor) and the special tokens; `train_new_from_iterator`
    then learns the vocabulary from the corpus and keeps the rest."""

    name: str  # a transformers tokenizer class, or a builder in BUILDERS
    options: dict[str, Any] = field(default_factory=dict)  # keywords for the constructor
    pad_is_eos: bool = False  # GPT-2 has no pad token; dslm has always given it end-of-text
    sentencepiece: bool = False  # Llama's BPE with byte fallback: see `train`

    def make(self) -> PreTrainedTokenizerBase:
        import transformers

        return (BUILDERS.get(self.name) or getattr(transformers, self.name))(**self.options)


def modernbert(**options: Any) -> PreTrainedTokenizerBase:
    """ModernBERT's convention (answerdotai/ModernBERT-*): byte-level BPE with [UNK] [CLS] [SEP] [PAD] [MASK],
    "[CLS] text [SEP]" per sequence, no token_type_ids. transformers 5.24 has no class for it (it maps
    modernbert to the generic TokenizersBackend, which cannot be built empty), so the pipeline is built
    here. The offsets are trimmed of their leading space, as RoBERTa's are: whole-word masking finds
    words by the gaps between offsets."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]  # ids 0-4 before and after training
    # [MASK] takes the space before it, as RoBERTa's <mask> does: "a [MASK]" masks the word after "a".
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False, lstrip=t == "[MASK]") for t in specials])
    backend.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=True),
        processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                      special_tokens=[("[CLS]", 1), ("[SEP]", 2)]),
    ])
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                                   pad_token="[PAD]", mask_token="[MASK]",
                                   model_input_names=["input_ids", "attention_mask"], **options)


BUILDERS: dict[str, Callable[..., PreTrainedTokenizerBase]] = {"modernbert": modernbert}

# Llama and Mistral (v0.1-v0.3 on the hub name LlamaTokenizer too): BPE with byte fallback, <unk> <s> </s>,
# BOS added to every sequence, no pad token. LlamaTokenizer() from scratch adds no BOS in transformers
# 5.24 (its docstring says it does): asked for explicitly.
LLAMA = Kind("LlamaTokenizer", {"add_bos_token": True}, sentencepiece=True)
# Qwen2/Qwen3: byte-level BPE behind Qwen's pre-tokenizer regex, <|endoftext|> as eos, pad and unk, no BOS.
QWEN = Kind("Qwen2Tokenizer")

# Families whose own kind dslm trains, each checked in tests/test_tokenizer*.py.
FAMILY_TOKENIZERS: dict[str, Kind] = {
    "bert": Kind("BertTokenizer"),
    "distilbert": Kind("DistilBertTokenizer"),
    "roberta": Kind("RobertaTokenizer"),
    "gpt2": Kind("GPT2Tokenizer", pad_is_eos=True),
    "xlnet": Kind("XLNetTokenizer"),
    "llama": LLAMA,
    "mistral": LLAMA,
    "mixtral": LLAMA,
    "qwen2": QWEN,
    "qwen2_moe": QWEN,
    "qwen3": QWEN,
    "qwen3_moe": QWEN,
    "gpt_neox": Kind("GPTNeoXTokenizer"),  # GPT-2's byte-level BPE, <|endoftext|>, and <|padding|> as pad
    "modernbert": Kind("modernbert"),
}
# Any other family: GPT-2's kind for a causal model (byte-level BPE, <|endoftext|> as bos, eos and unk, no
# pad), BERT's for an encoder (WordPiece, [PAD] [UNK] [CLS] [SEP] [MASK]) without token_type_ids, which
# single texts do not need and not every encoder's forward takes.
CAUSAL = Kind("GPT2Tokenizer")
MASKED = Kind("BertTokenizer", {"model_input_names": ["input_ids", "attention_mask"]})
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]


def load(name_or_path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load a tokenizer from {name_or_path} ({first_line(exc)}): pass --tokenizer_name DIR "
                          f"with a tokenizer, or train one by building the model from scratch") from None


def cache_root(cache_dir: str | None) -> Path:
    """Trained tokenizers outlive one run's output dir: the same corpus keeps the same tokenizer."""
    if cache_dir:
        return Path(cache_dir)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dslm" / "tokenizers"


def train_once(directory: Path, family: str, vocab_size: int, texts: Callable[[], list[str]],
               overwrite: bool, objective: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer trained on `texts()` and kept in `directory`, the same on every rank.

    WordPiece training breaks ties between merges in hash order, so two trainings on one corpus
    can differ: rank 0 trains, every node receives its files, and the result is kept per corpus so
    that later runs reuse it. The other ranks wait for it outside any collective: on a big corpus
    training takes longer than --dist_timeout.
    """
    if overwrite and dist.local_rank() == 0 and directory.exists():
        atomic.remove(directory)
    dist.barrier()

    def trained_files() -> dict[str, bytes]:
        # The lock makes the slices of `dslm prepare` on several machines (sharing the cache) train it once.
        directory.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(directory) + ".lock"):
            if not directory.exists():
                corpus = texts()
                # dslm's line instead of the trainer's progress bars (blank lines where output is a file)
                print(f"tokenizer: training a {kind_for(family, objective).name} of {vocab_size} tokens on "
                      f"{len(corpus)} texts (kept for later runs in {_home_as_tilde(directory.parent)})", flush=True)
                batches = (corpus[i:i + 1000] for i in range(0, len(corpus), 1000))
                trained = train(family, batches, vocab_size, objective)
                atomic.write_directory(directory, lambda tmp: trained.save_pretrained(str(tmp)))
        return {p.name: p.read_bytes() for p in directory.iterdir()}

    files = dist.from_rank0(f"tokenizer/{directory.name}", trained_files, "rank 0 to train the tokenizer")
    if dist.local_rank() == 0 and not directory.exists():
        atomic.write_directory(directory, lambda tmp: [(tmp / n).write_bytes(b) for n, b in files.items()])
    dist.wait_all(f"tokenizer/{directory.name}", "each node to store the tokenizer")
    return load(str(directory))


def _home_as_tilde(path: Path) -> str:
    home = Path.home()
    return f"~/{path.relative_to(home)}" if path.is_relative_to(home) else str(path)


def kind_for(family: str, objective: str | None = None) -> Kind:
    """The kind of tokenizer `train` gives a model family: its own where dslm knows it, else one chosen by
    what the family is. An encoder (a family with a masked-LM head) gets BERT's kind for any objective, as
    BERT does: its model code expects a pad token of its own, and the kind then does not depend on the
    objective. Any other family gets GPT-2's kind; XLNet's permutation LM has no generic kind."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if family in FAMILY_TOKENIZERS:
        return FAMILY_TOKENIZERS[family]
    if objective == "plm":
        raise ConfigError(f"dslm trains a tokenizer for --objective plm only for xlnet (got model type {family!r}): "
                          f"pass --tokenizer_name DIR")
    return MASKED if objective == "mlm" or family in MODEL_FOR_MASKED_LM_MAPPING_NAMES else CAUSAL


def train(family: str, texts: Iterable[list[str]], vocab_size: int,
          objective: str | None = None) -> PreTrainedTokenizerBase:
    """A tokenizer of the family's kind (`kind_for`; `objective` None: the family's usual one) trained on
    the batches of `texts`, about `vocab_size` tokens, with ids that do not depend on chance."""
    kind = kind_for(family, objective)
    base = kind.make()
    whole_text = base.backend_tokenizer.pre_tokenizer  # Llama's: Metaspace(split=False)
    if kind.sentencepiece:
        # SentencePiece learns pieces inside words (split_by_whitespace), but Llama's pre-tokenizer keeps the
        # text whole: trained as it is, BPE would merge across words ("in▁the▁") and count each document as
        # one word. So it learns from words; whole texts then encode to the same pieces.
        from tokenizers import pre_tokenizers

        base.backend_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=True)
        vocab_size = max(vocab_size - len(BYTE_TOKENS), 0)  # room for the byte tokens
    trained = base.train_new_from_iterator(texts, vocab_size=vocab_size, show_progress=False)
    if kind.sentencepiece:
        trained.backend_tokenizer.pre_tokenizer = whole_text
    if kind.pad_is_eos:  # padding reuses end-of-text, masked by attention_mask
        trained.pad_token = trained.eos_token
    with tempfile.TemporaryDirectory() as tmp:
        trained.save_pretrained(tmp)
        path = Path(tmp) / "tokenizer.json"
        spec = json.loads(path.read_text())
        if kind.sentencepiece:
            spec = with_byte_tokens(spec)
        path.write_text(json.dumps(canonical_ids(spec)))
        return AutoTokenizer.from_pretrained(tmp)


def with_byte_tokens(spec: dict) -> dict:
    """Give a byte-fallback BPE its 256 byte tokens <0x00>..<0xFF>, right after the special tokens as in
    Llama's vocabulary. The BPE trainer does not add them, and without them a character never seen in
    training falls back to <unk> instead of its UTF-8 bytes."""
    vocab = spec["model"]["vocab"]
    first = len(spec["added_tokens"])
    if sorted(t["id"] for t in spec["added_tokens"]) != list(range(first)):
        raise ValueError("the special tokens must come first in the vocabulary")
    ordered = sorted(vocab, key=vocab.__getitem__)
    learned = [tok for tok in ordered[first:] if tok not in BYTE_TOKENS]
    spec["model"]["vocab"] = {tok: i for i, tok in enumerate(ordered[:first] + BYTE_TOKENS + learned)}
    return spec


CONFIG_TOKENS = ("pad", "bos", "eos", "cls", "sep", "mask", "unk")


def config_ids(tokenizer: PreTrainedTokenizerBase, model_config: Any) -> dict[str, int | None]:
    """The special-token ids to set in a model config built from scratch for `tokenizer`.

    A config from scratch carries the defaults of the real checkpoint's vocabulary (Llama's bos 1 / eos 2,
    ModernBERT's cls/sep 50281/50282, Phi-3's pad 32000), which mean nothing in a small vocabulary trained
    here, or point past it. For each `<name>_token_id` the config has: the tokenizer's id for that token,
    or None where the tokenizer has no such token. The pad id is also None where the pad token is another
    special token (GPT-2's and Qwen2's end-of-text): models built with `padding_idx` = pad id zero that
    row and never train it, which would freeze the end-of-text embedding; padding is masked by
    attention_mask anyway.
    """
    ids: dict[str, int | None] = {}
    for name in CONFIG_TOKENS:
        attribute = f"{name}_token_id"
        if hasattr(model_config, attribute):
            ids[attribute] = getattr(tokenizer, attribute)
    if "pad_token_id" in ids and tokenizer.pad_token_id is not None:
        others = {getattr(tokenizer, f"{name}_token_id") for name in CONFIG_TOKENS if name != "pad"}
        if tokenizer.pad_token_id in others:
            ids["pad_token_id"] = None
    return ids


def canonical_ids(spec: dict) -> dict:
    """Renumber a trained vocabulary in a fixed order, so the same corpus gives the same ids.

    WordPiece and Unigram trainers number tokens of equal rank in hash order, which changes from
    one process to the next: two runs with the same seed would then train on different ids.
    Special tokens keep their ids; the rest are numbered by text (Unigram: by score, then text). Neither model
    depends on the numbering (WordPiece matches longest strings, Unigram uses scores); BPE's ids
    follow its merge order, which is already deterministic.
    """
    model = spec["model"]
    fixed = {t["id"] for t in spec.get("added_tokens", [])}
    if model["type"] == "WordPiece":
        pinned = {tok: i for tok, i in model["vocab"].items() if i in fixed}
        free = sorted(i for i in model["vocab"].values() if i not in fixed)
        rest = sorted(tok for tok in model["vocab"] if tok not in pinned)
        model["vocab"] = dict(sorted({**pinned, **dict(zip(rest, free, strict=True))}.items(), key=lambda kv: kv[1]))
    elif model["type"] == "Unigram":
        # Unigram's EM sums floats in thread order (scores differ in their last bits), and the
        # trainer spreads rare characters over scores 1e-4 apart in hash order. So runs of scores
        # closer than 2e-4 form groups; inside a group pieces are ordered by text and take the
        # group's scores from high to low. The groups and their scores are the same every run.
        pieces = [[piece, round(score, 8)] for piece, score in model["vocab"]]
        free = sorted((i for i in range(len(pieces)) if i not in fixed), key=lambda i: -pieces[i][1])
        groups: list[list[list]] = []
        for i in free:
            if groups and groups[-1][-1][1] - pieces[i][1] < 2e-4:
                groups[-1].append(pieces[i])
            else:
                groups.append([pieces[i]])
        ordered = [[name, score] for group in groups
                   for name, score in zip(sorted(p[0] for p in group), [p[1] for p in group], strict=True)]
        for i, piece in zip(sorted(free), ordered, strict=True):
            pieces[i] = piece
        model["vocab"] = pieces
        if model.get("unk_id") is not None and model["unk_id"] not in fixed:
            raise ValueError("the Unigram unknown token must be a special token")
    return spec


def fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """Changes whenever the tokenizer would produce different ids for the same text."""
    backend = tokenizer.backend_tokenizer.to_str() if hasattr(tokenizer, "backend_tokenizer") else str(
        sorted(tokenizer.get_vocab().items()))
    extra = f"{type(tokenizer).__name__}|{tokenizer.all_special_tokens}|{tokenizer.padding_side}"
    return hashlib.sha256((backend + extra).encode()).hexdigest()[:16]

