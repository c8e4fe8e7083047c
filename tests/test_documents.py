"""Document-aware packing (dslm.documents): inside a packed block each document is scored as if it were alone."""

from __future__ import annotations

import model_dirs
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

from dslm import documents, objectives
from dslm.config import ObjectiveConfig
from dslm.data.encode import Encoder, columns_for
from dslm.errors import ConfigError

TEXTS = ("The interpreter evaluates expressions from left to right, raising exceptions on errors.",
         "A class definition creates a new namespace; names assigned in it become attributes.",
         "Numbers are created by literals and returned by arithmetic operators and functions.")
FAMILY_OBJECTIVE = [(family, objective) for objective, names in documents.FAMILIES.items() for family in names]
_TOKENIZERS: dict[str, object] = {}


def tokenizer(family: str):
    """The family's tokenizer with the real checkpoint's conventions (tests/model_dirs.py), built once."""
    if family not in _TOKENIZERS:
        _TOKENIZERS[family] = model_dirs.TOKENIZERS[family]()
    return _TOKENIZERS[family]


def encoded(tok, objective: str) -> list[dict[str, list]]:
    """Each text as the Encoder writes it into the packed stream (with the EOS it appends, if any)."""
    enc = Encoder(tok, columns_for(objective, False), line_by_line=False, max_seq_length=128)
    rows = enc.rows(enc.encode(list(TEXTS)))
    return [{name: rows[name][i] for name in rows} for i in range(len(TEXTS))]


def block(docs: list[dict[str, list]], order: tuple[int, ...]) -> dict[str, list]:
    return {name: [x for i in order for x in docs[i][name]] for name in docs[0]}


def model_for(family: str, objective: str, impl: str) -> torch.nn.Module:
    config = model_dirs.CONFIGS[family](tokenizer(family))
    auto = AutoModelForMaskedLM if objective == "mlm" else AutoModelForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return auto.from_config(config, attn_implementation=impl).eval()


class Engine(torch.nn.Module):
    """What Forward meets in training: a DeepSpeed engine, the model as its `module`."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, **inputs):
        return self.module(**inputs)


def token_losses(forward: objectives.Forward, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B, T] loss of each position's prediction (CLM: of the next token; NaN where nothing is predicted)."""
    shape = batch["labels"].shape
    with torch.no_grad():
        out = forward(model, batch, torch.device("cpu"))
    losses = F.cross_entropy(out.logits.flatten(0, 1).float(), out.labels.flatten(), ignore_index=-100,
                             reduction="none")
    full = torch.full((shape[0] * shape[1],), float("nan"))
    if forward.sparse:  # one row of the labelled positions, in order
        full[(batch["labels"].flatten() != -100).nonzero().squeeze(1)] = losses
    else:
        width = out.labels.shape[1]  # CLM drops the last position, which predicts nothing
        full.view(shape)[:, :width] = losses.view(shape[0], width)
        full.view(shape)[:, :width][out.labels == -100] = float("nan")
    return full.view(shape)


def test_positions_restart_after_each_end_token():
    ids = torch.tensor([[5, 9, 7, 9, 9, 3, 4], [5, 6, 7, 8, 3, 4, 2], [9, 1, 2, 9, 3, 4, 9]])
    assert documents.position_ids(ids, 9).tolist() == [[0, 1, 0, 1, 0, 0, 1], [0, 1, 2, 3, 4, 5, 6],
                                                       [0, 0, 1, 2, 0, 1, 2]]
    assert documents.position_ids(ids, 9).dtype == torch.int64


def test_block_diagonal_masks_in_the_form_each_attention_takes():
    positions = torch.tensor([[0, 1, 0, 1, 2]])
    sdpa = documents.attention_mask_4d(positions, torch.float32, "sdpa")
    assert sdpa.dtype == torch.bool and sdpa.shape == (1, 1, 5, 5)
    assert sdpa[0, 0].int().tolist() == [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 1, 1], [0, 0, 1, 1, 1],
                                         [0, 0, 1, 1, 1]]
    eager = documents.attention_mask_4d(positions, torch.bfloat16, "eager")
    assert eager.dtype == torch.bfloat16
    assert torch.equal(eager == 0, sdpa) and (eager[~sdpa] == torch.finfo(torch.bfloat16).min).all()
    with pytest.raises(ConfigError) as err:
        documents.attention_mask_4d(positions, torch.float32, "flash_attention_2")
    assert "\n" not in str(err.value) and "flash_attention_2" in str(err.value)


@pytest.mark.parametrize(("family", "end"), [("gpt2", "<|endoftext|>"), ("llama", "</s>"), ("qwen2", "<|endoftext|>"),
                                             ("bert", "[SEP]"), ("roberta", "</s>")])
def test_end_id_is_the_token_that_closes_each_encoded_document(family, end):
    tok = tokenizer(family)
    end_id = documents.end_id(tok)
    assert tok.convert_ids_to_tokens(end_id) == end
    for doc in encoded(tok, objectives.default_objective(family)):
        assert doc["input_ids"][-1] == end_id and doc["input_ids"].count(end_id) == 1
    # Llama begins each document with BOS; the EOS the Encoder appends is what ends it.
    assert Encoder(tok, ["input_ids"], line_by_line=False, max_seq_length=8).add_eos == (family in (
        "gpt2", "llama", "qwen2"))


def test_end_id_refuses_a_tokenizer_that_marks_no_end():
    tok = model_dirs.TOKENIZERS["gpt2"]()
    tok.eos_token = None
    with pytest.raises(ConfigError) as err:
        documents.end_id(tok)
    assert "\n" not in str(err.value)


def test_check_refuses_other_families_and_lines():
    from dslm.config import RunConfig

    documents.check("clm", "llama")
    documents.check("mlm", "roberta")
    with pytest.raises(ConfigError) as err:
        documents.check("plm", "xlnet")
    message = str(err.value)
    assert "\n" not in message and "got xlnet (plm)" in message and "gpt2" in message and "bert" in message
    with pytest.raises(ConfigError) as err:
        RunConfig.from_flags(model_type="gpt2", reset_attention_mask=True, line_by_line=True)
    assert "\n" not in str(err.value) and "--line_by_line" in str(err.value)


def test_flash_attention_confines_documents_only_in_batches_of_one_block():
    documents.check_decoder("flash_attention_2", 1)
    documents.check_decoder("sdpa", 8)
    tok = tokenizer("gpt2")
    model = model_for("gpt2", "clm", "sdpa")
    model.config._attn_implementation = "flash_attention_2"  # as it would be on a GPU, never run here
    docs = encoded(tok, "clm")
    batch = objectives.Collator("clm", tok, ObjectiveConfig(), document_end=documents.end_id(tok))(
        [block(docs, (0, 1, 2)), block(docs, (2, 1, 0))])
    with pytest.raises(ConfigError) as err:
        objectives.Forward(model, "clm")(model, batch, torch.device("cpu"))
    assert "\n" not in str(err.value) and "flash_attention_2" in str(err.value)


def test_position_offset_of_roberta_style_models():
    assert documents.position_offset(model_dirs.CONFIGS["roberta"](tokenizer("roberta"))) == 2
    assert documents.position_offset(model_dirs.CONFIGS["bert"](tokenizer("bert"))) == 0


def test_collator_positions_come_from_the_ids_before_masking():
    tok = tokenizer("bert")
    docs = encoded(tok, "mlm")
    examples = [block(docs, (0, 1, 2)), block(docs, (2, 0, 1))]
    collate = objectives.Collator("mlm", tok, ObjectiveConfig(mlm_probability=0.9), document_end=102)
    torch.manual_seed(0)
    batch = collate(examples)
    ids = torch.tensor([e["input_ids"] for e in examples])
    assert torch.equal(batch["position_ids"], documents.position_ids(ids, 102))
    assert batch["position_ids"].dtype == torch.int64 and batch["attention_mask"].all()
    assert not torch.equal(batch["input_ids"], ids)
    with pytest.raises(ValueError):
        collate([examples[0], {k: v[:-3] for k, v in examples[1].items()}])


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize(("family", "objective"), FAMILY_OBJECTIVE)
def test_each_packed_document_scores_as_if_alone(family, objective, impl):
    """The middle document of a packed block gets the losses it gets fed alone; without the flag it does not."""
    tok = tokenizer(family)
    docs = encoded(tok, objective)
    model = model_for(family, objective, impl)
    cfg = ObjectiveConfig(mlm_probability=0.5)
    end = documents.end_id(tok)
    start = len(docs[0]["input_ids"])
    stop = start + len(docs[1]["input_ids"])
    # A second block with the documents in another order: positions and masks are per row.
    examples = [block(docs, (0, 1, 2)), block(docs, (2, 1, 0))]
    torch.manual_seed(1)
    packed = objectives.Collator(objective, tok, cfg, document_end=end)(examples)
    alone = {k: v[:1, start:stop] for k, v in packed.items() if k != "position_ids"}
    forward = objectives.Forward(model, objective)

    on = token_losses(forward, Engine(model), packed)[0, start:stop]
    off = token_losses(forward, model, {k: v for k, v in packed.items() if k != "position_ids"})[0, start:stop]
    own = token_losses(forward, model, alone)[0]
    scored = ~own.isnan()
    assert scored.sum() >= 5 and not on[scored].isnan().any()
    diff_on = (on - own)[scored].abs().max().item()
    diff_off = (off - own)[scored].abs().max().item()
    print(f"{family} {impl}: flag on {diff_on:.2e}, off {diff_off:.2e}")
    assert diff_on < 1e-5
    assert diff_off > 1e-3
    if objective == "mlm":  # evaluation's Forward sends every position through the head
        dense = token_losses(objectives.Forward(model, objective, sparse=False), model, packed)[0, start:stop]
        assert torch.allclose(dense[scored], on[scored], atol=1e-5)
