"""One optimizer step of dslm's `train_step` on the real DeepSpeed engine, on a fixed set of 8 examples cut
into `--micro` examples per micro batch and `--gas` micro batches per rank: run by tests/test_step.py
through DeepSpeed's launcher with 1 or 2 ranks, once per cut.

The 8 examples are collated once, together, with a fixed seed, so every cut sees the same masks; dropout
is off (eval mode) and the optimizer is SGD with learning rate 1, so the weights' change is the gradient.
Rank 0 writes, per objective, the step's token-weighted loss, the gradient, and the loss the old
definition (a mean per micro batch, averaged over micro batches and ranks) would have logged.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # model_dirs
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # dslm from a checkout

import model_dirs  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer  # noqa: E402

from dslm import dist, nonfinite, objectives  # noqa: E402
from dslm.config import ObjectiveConfig  # noqa: E402
from dslm.data.sources import builtin_texts  # noqa: E402
from dslm.progress import Progress  # noqa: E402
from dslm.step import train_step  # noqa: E402

CASES = (("mlm", "bert"), ("clm", "gpt2"), ("plm", "xlnet"))
EXAMPLES = 8


def examples(tokenizer, objective: str) -> list[dict[str, list[int]]]:
    """Lines of different lengths (so padding and label counts differ between micro batches)."""
    lines = [line for text in builtin_texts()[:6] for line in text.splitlines() if len(line.split()) > 3]
    rows = []
    for i, line in enumerate(lines[:EXAMPLES]):
        enc = tokenizer(line, truncation=True, max_length=8 + 3 * i, return_special_tokens_mask=True)
        rows.append({"input_ids": enc["input_ids"]} | (
            {"special_tokens_mask": enc["special_tokens_mask"]} if objective == "mlm" else {}))
    return rows


def one_step(objective: str, directory: Path, micro: int, gas: int) -> dict:
    tokenizer = AutoTokenizer.from_pretrained(directory)
    loader = AutoModelForMaskedLM if objective == "mlm" else AutoModelForCausalLM
    module = loader.from_pretrained(directory)
    module.eval()  # no dropout: every cut computes the same function
    torch.manual_seed(0)
    batch = objectives.Collator(objective, tokenizer, ObjectiveConfig())(examples(tokenizer, objective))
    world, rank = dist.world_size(), dist.rank()
    mine = list(range(rank, EXAMPLES, world))  # as the sampler deals: rank r takes every world-th example
    micro_batches = [{k: v[mine[j * micro:(j + 1) * micro]] for k, v in batch.items()} for j in range(gas)]

    import deepspeed

    ds = {"train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": gas,
          "train_batch_size": micro * gas * world, "gradient_clipping": 0.0, "zero_optimization": {"stage": 0},
          "steps_per_print": 10**9}
    engine, *_ = deepspeed.initialize(model=module, optimizer=torch.optim.SGD(module.parameters(), lr=1.0),
                                      config=ds)
    forward = objectives.Forward(module, objective)
    guard = nonfinite.Guard(engine, "stop", fp16=False, min_loss_scale=1.0, progress=Progress(), warn=print,
                            kept=lambda: "")
    # The old definition: each micro batch's mean, averaged over the micro batches and then over the ranks.
    with torch.no_grad():
        means = torch.tensor([float(forward(engine, b, engine.device).loss_sum) / max(
            objectives.label_tokens(b, objective), 1) for b in micro_batches], dtype=torch.float64).mean()
    dist.all_reduce(means)
    before = torch.cat([p.detach().flatten().clone() for p in module.parameters()])
    result = train_step(engine, forward, module, micro_batches, guard)
    grad = before - torch.cat([p.detach().flatten() for p in module.parameters()])
    totals = torch.stack([result.loss_sum.double(), torch.tensor(float(result.label_tokens), dtype=torch.float64)])
    dist.all_reduce(totals)
    return {"loss": float(totals[0] / totals[1]), "old_loss": float(means) / world, "grad": grad,
            "label_tokens": int(totals[1])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--micro", type=int, required=True)
    parser.add_argument("--gas", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--local_rank", type=int)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        # Made before the process group exists: transformers saves on the main process only once it does.
        # The same bytes on every rank and in every run.
        directories = {objective: model_dirs.make(family, Path(tmp) / family) for objective, family in CASES}
        dist.fill_launcher_env(os.environ)
        dist.init(5)
        for objective, directory in directories.items():
            results[objective] = one_step(objective, directory, args.micro, args.gas)
    if dist.is_main():
        torch.save(results, args.out)
    dist.barrier()


if __name__ == "__main__":
    main()
