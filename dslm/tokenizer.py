"""Load a tokenizer, or train one on the training corpus for a model built from scratch."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from dslm import atomic, dist
from dslm.errors import ConfigError, first_line

# Each family's own tokenizer class knows its algorithm (WordPiece, byte-level BPE, Unigram) and
# special tokens; `train_new_from_iterator` retrains it on our corpus with the same pipeline.
FAMILY_TOKENIZERS = {
    "bert": "BertTokenizer",
    "distilbert": "DistilBertTokenizer",
    "roberta": "RobertaTokenizer",
    "gpt2": "GPT2Tokenizer",
    "xlnet": "XLNetTokenizer",
}


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
               overwrite: bool) -> PreTrainedTokenizerBase:
    """The tokenizer trained on `texts()` and kept in `directory`, the same on every rank.

    WordPiece training breaks ties between merges in hash order, so two trainings on one corpus
    can differ: one rank trains and every node receives its files, and the result is kept per
    corpus so that later runs reuse it.
    """
    if overwrite and dist.local_rank() == 0 and directory.exists():
        atomic.remove(directory)
    dist.barrier()
    files: dict[str, bytes] | tuple[str, str] | None = None
    if dist.rank() == 0:
        try:
            if not directory.exists():
                corpus = texts()
                trained = train(family, (corpus[i:i + 1000] for i in range(0, len(corpus), 1000)), vocab_size)
                atomic.write_directory(directory, lambda tmp: trained.save_pretrained(str(tmp)))
            files = {p.name: p.read_bytes() for p in directory.iterdir()}
        except ConfigError as exc:  # bad input: every rank stops with the same one line
            files = ("error", str(exc))
    files = dist.broadcast(files)
    if isinstance(files, tuple):
        raise ConfigError(files[1])
    if dist.local_rank() == 0 and not directory.exists():
        atomic.write_directory(directory, lambda tmp: [(tmp / n).write_bytes(b) for n, b in files.items()])
    dist.barrier()
    return load(str(directory))


def train(family: str, texts: Iterator[list[str]], vocab_size: int) -> PreTrainedTokenizerBase:
    """A tokenizer of the family's kind, trained on `texts`, with ids that do not depend on chance."""
    import tempfile

    import transformers

    if family not in FAMILY_TOKENIZERS:
        raise ConfigError(f"dslm cannot train a tokenizer for model type {family!r} (it can for "
                          f"{', '.join(FAMILY_TOKENIZERS)}): pass --tokenizer_name DIR")
    base = getattr(transformers, FAMILY_TOKENIZERS[family])()
    trained = base.train_new_from_iterator(texts, vocab_size=vocab_size)
    if trained.pad_token is None:  # GPT-2 has none; padding reuses end-of-text, masked by attention_mask
        trained.pad_token = trained.eos_token
    with tempfile.TemporaryDirectory() as tmp:
        trained.save_pretrained(tmp)
        path = Path(tmp) / "tokenizer.json"
        path.write_text(json.dumps(canonical_ids(json.loads(path.read_text()))))
        return AutoTokenizer.from_pretrained(tmp)


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

