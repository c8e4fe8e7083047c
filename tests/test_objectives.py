import pytest
import torch

from dslm import objectives, tokenizer
from dslm.config import ObjectiveConfig
from dslm.data.sources import builtin_texts
from dslm.errors import ConfigError


@pytest.fixture(scope="module")
def bert_tok():
    return tokenizer.train("bert", iter([builtin_texts()[:40]]), vocab_size=400)


def encode(tok, texts, wwm=True):
    enc = tok(texts, return_special_tokens_mask=True, return_offsets_mapping=wwm)
    keys = ["input_ids", "special_tokens_mask"] + (["offset_mapping"] if wwm else [])
    return [{k: enc[k][i] for k in keys} for i in range(len(texts))]


def test_whole_word_mask_masks_every_subtoken_of_a_chosen_word_and_nothing_else(bert_tok):
    texts = ["the interpreter evaluates expressions and statements, raising exceptions " * 3] * 8
    examples = encode(bert_tok, texts)
    collate = objectives.Collator("mlm", bert_tok, ObjectiveConfig(mlm_probability=0.3, whole_word_mask=True))
    torch.manual_seed(0)
    batch = collate(examples)
    masked = batch["labels"] != -100
    assert masked.any()
    for row, ex in enumerate(examples):
        offsets, special = ex["offset_mapping"], ex["special_tokens_mask"]
        word, words = -1, []
        for i, (start, _) in enumerate(offsets):  # a word continues while tokens touch (no gap)
            if special[i]:
                words.append(None)
                continue
            if i == 0 or special[i - 1] or start != offsets[i - 1][1]:
                word += 1
            words.append(word)
        for w in set(filter(lambda x: x is not None, words)):
            positions = [i for i, x in enumerate(words) if x == w]
            states = {bool(masked[row, i]) for i in positions}
            assert len(states) == 1, f"word {w} partly masked"
        assert not any(masked[row, i] for i, s in enumerate(special) if s)
        # With whole words, every masked input becomes [MASK] (no random replacement).
        assert (batch["input_ids"][row][masked[row]] == bert_tok.mask_token_id).all()
    multi = [w for w in set(words) if w is not None and words.count(w) > 1]
    assert multi, "the test text must contain words split into several sub-tokens"


def test_plm_batches_have_even_length_and_valid_permutation_masks():
    tok = tokenizer.train("xlnet", iter([builtin_texts()[:40]]), vocab_size=400)
    texts = ["a short line", "a somewhat longer line of text for the permutation objective here"]
    examples = [{"input_ids": ids} for ids in tok(texts)["input_ids"]]
    collate = objectives.Collator("plm", tok, ObjectiveConfig(plm_probability=1 / 6, max_span_length=3))
    batch = collate(examples)
    b, n = batch["input_ids"].shape
    assert n % 2 == 0 and n % objectives.PAD_MULTIPLE == 0
    assert batch["perm_mask"].shape == (b, n, n)
    assert batch["target_mapping"].shape == (b, n, n)
    targets = batch["labels"] != -100
    assert targets.any()
    # A token to predict cannot see itself; padding is never a target.
    for row in range(b):
        for i in torch.nonzero(targets[row]).flatten().tolist():
            assert batch["perm_mask"][row, i, i] == 1
    assert not targets[batch["attention_mask"] == 0].any()


def test_clm_labels_ignore_padding_even_when_pad_is_eos():
    tok = tokenizer.train("gpt2", iter([builtin_texts()[:20]]), vocab_size=300)
    assert tok.pad_token_id == tok.eos_token_id
    ids = tok(["one two three", "one"])["input_ids"]
    examples = [{"input_ids": row + [tok.eos_token_id]} for row in ids]
    batch = objectives.Collator("clm", tok, ObjectiveConfig())(examples)
    assert (batch["labels"][0, : len(examples[0]["input_ids"])] == torch.tensor(examples[0]["input_ids"])).all()
    assert batch["labels"][1, len(examples[1]["input_ids"]) - 1] == tok.eos_token_id  # real EOS is learned
    assert (batch["labels"][1, len(examples[1]["input_ids"]):] == -100).all()


@pytest.mark.parametrize("objective, family, message", [
    ("plm", "bert", "needs a model type such as xlnet \\(got bert; bert can do mlm, clm\\)"),
    ("mlm", "gpt2", "needs a model type such as bert, roberta, distilbert, modernbert \\(got gpt2; gpt2 can do clm\\)"),
])
def test_objective_model_mismatch(objective, family, message):
    with pytest.raises(ConfigError, match=message):
        objectives.check(objective, family)


def test_default_objectives():
    assert [objectives.default_objective(f) for f in ("bert", "roberta", "gpt2", "xlnet")] == [
        "mlm", "mlm", "clm", "plm"]


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_the_sparse_mlm_head_gives_the_models_own_loss_and_gradients(bert_tok, family):
    """Only labelled positions go through the head: same loss, same gradients, fewer FLOPs."""
    from transformers import AutoConfig, AutoModelForMaskedLM

    small = {"bert": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
             "roberta": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             pad_token_id=bert_tok.pad_token_id),
             "distilbert": dict(dim=32, n_layers=2, n_heads=2, hidden_dim=64)}[family]
    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_config(AutoConfig.for_model(family, vocab_size=len(bert_tok), **small))
    collate = objectives.Collator("mlm", bert_tok, ObjectiveConfig())
    batch = collate(encode(bert_tok, ["the interpreter evaluates expressions and statements"] * 4, wwm=False))
    batch.pop("token_type_ids", None)
    dense = objectives.Forward(model, "mlm", sparse=False)
    sparse = objectives.Forward(model, "mlm")
    assert sparse.sparse and not dense.sparse
    results = []
    for forward in (dense, sparse):
        model.zero_grad()
        torch.manual_seed(1)  # the same dropout masks for both
        out = forward(model, dict(batch), torch.device("cpu"))
        out.loss_sum.backward()
        results.append((out.loss_sum.detach(), out.logits.shape, [p.grad.clone() for p in model.parameters()]))
    (dense_loss, dense_shape, dense_grads), (sparse_loss, sparse_shape, sparse_grads) = results
    n_labelled = int((batch["labels"] != -100).sum())
    assert objectives.label_tokens(batch, "mlm") == n_labelled
    assert sparse_shape == (1, n_labelled, len(bert_tok)) and dense_shape[:2] == batch["labels"].shape
    assert torch.allclose(sparse_loss, dense_loss, rtol=1e-6)
    torch.manual_seed(1)
    assert torch.allclose(dense_loss / n_labelled, model(**batch).loss, rtol=1e-6)  # the model's own mean, summed
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(dense_grads, sparse_grads, strict=True))
    assert model(**batch).logits.shape[:2] == batch["labels"].shape  # a plain call still sees every position


@pytest.fixture(scope="module")
def real_tokenizers(tmp_path_factory):
    """Tokenizers with the real checkpoints' conventions (tests/model_dirs.py), by family."""
    import model_dirs
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("real")
    return {family: AutoTokenizer.from_pretrained(model_dirs.make(family, root / family))
            for family in ("gpt2", "llama", "qwen2", "mistral", "xlnet", "modernbert", "roberta")}


@pytest.mark.parametrize("family", ["gpt2", "llama", "mistral", "qwen2"])
def test_causal_batches_of_a_tokenizer_without_a_pad_token(real_tokenizers, family):
    """GPT-2, Llama and Mistral as published have no pad token: packed blocks and padded lines still collate,
    padding gets a valid id and no label, and the tokenizer is left as it was."""
    tok = real_tokenizers[family]
    had_pad = tok.pad_token
    ids = tok("the interpreter evaluates expressions and statements, raising exceptions " * 4)["input_ids"]
    collate = objectives.Collator("clm", tok, ObjectiveConfig())
    packed = collate([{"input_ids": ids[:16]}, {"input_ids": ids[16:32]}])
    assert packed["labels"].tolist() == [ids[:16], ids[16:32]] and packed["attention_mask"].all()
    lines = collate([{"input_ids": ids[:5]}, {"input_ids": ids[:11]}])
    assert lines["input_ids"].shape == (2, objectives.PAD_MULTIPLE * 2)
    assert lines["labels"][0].tolist() == ids[:5] + [-100] * 11 and lines["attention_mask"][0].sum() == 5
    assert 0 <= int(lines["input_ids"][0, -1]) < len(tok)  # padding is a real id: the embedding has a row for it
    assert tok.pad_token == had_pad


@pytest.mark.parametrize("n", [1, 3])
def test_xlnet_batches_of_lines_of_one_odd_length(real_tokenizers, n):
    """The permutation collator needs an even length: a batch whose lines all have one odd length (always
    with one line per batch) is padded to an even width, the padding never a target."""
    tok = real_tokenizers["xlnet"]
    ids = tok("a line of text for the permutation objective")["input_ids"]
    ids = ids[:-1] if len(ids) % 2 == 0 else ids  # odd, ending with XLNet's <sep> <cls> or not
    collate = objectives.Collator("plm", tok, ObjectiveConfig(plm_probability=1 / 6, max_span_length=3))
    batch = collate([{"input_ids": ids}] * n)
    width = -(-len(ids) // objectives.PAD_MULTIPLE) * objectives.PAD_MULTIPLE  # as any padded batch of lines
    assert batch["input_ids"].shape == (n, width) and width % 2 == 0
    assert batch["attention_mask"].sum(1).tolist() == [len(ids)] * n
    assert (batch["labels"][:, len(ids):] == -100).all() and batch["perm_mask"].shape == (n, width, width)


def test_masked_batches_of_a_tokenizer_that_pads_on_the_left_or_has_no_type_ids(real_tokenizers):
    for family in ("modernbert", "roberta"):
        tok = real_tokenizers[family]
        ids = tok("the interpreter evaluates expressions")["input_ids"]
        torch.manual_seed(0)
        batch = objectives.Collator("mlm", tok, ObjectiveConfig(mlm_probability=0.5))(
            [{"input_ids": ids, "special_tokens_mask": [0] * len(ids)}, {"input_ids": ids[:3],
                                                                        "special_tokens_mask": [0] * 3}])
        assert batch["labels"][1, 3:].eq(-100).all() and set(batch) == {"input_ids", "labels", "attention_mask"}


def test_line_padding_stops_at_the_sequence_length(real_tokenizers):
    """Rounding up to a multiple of 8 must not go past --max_seq_length: the model's positions may end there."""
    tok = real_tokenizers["gpt2"]
    ids = tok("the interpreter evaluates expressions and statements " * 4)["input_ids"][:30]
    collate = objectives.Collator("clm", tok, ObjectiveConfig(), max_length=30)
    assert collate([{"input_ids": ids}, {"input_ids": ids[:7]}])["input_ids"].shape == (2, 30)
    assert objectives.Collator("clm", tok, ObjectiveConfig())([{"input_ids": ids}, {"input_ids": ids[:7]}])[
        "input_ids"].shape == (2, 32)
