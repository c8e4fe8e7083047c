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
    ("mlm", "gpt2", "needs a model type such as bert, roberta, distilbert \\(got gpt2; gpt2 can do clm\\)"),
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
        loss, logits, labels = forward(model, dict(batch), torch.device("cpu"))
        loss.backward()
        results.append((loss.detach(), logits.shape, [p.grad.clone() for p in model.parameters()]))
    (dense_loss, dense_shape, dense_grads), (sparse_loss, sparse_shape, sparse_grads) = results
    n_labelled = int((batch["labels"] != -100).sum())
    assert sparse_shape == (1, n_labelled, len(bert_tok)) and dense_shape[:2] == batch["labels"].shape
    assert torch.allclose(sparse_loss, dense_loss, rtol=1e-6)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(dense_grads, sparse_grads, strict=True))
    assert model(**batch).logits.shape[:2] == batch["labels"].shape  # a plain call still sees every position
