"""Loss, perplexity and token accuracy over a whole validation set, each example counted once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from datasets import Dataset

from dslm.metrics import perplexity
from dslm.objectives import Forward, Output


def token_stats(out: Output) -> torch.Tensor:
    """[summed loss, correct predictions, predicted tokens] of one batch."""
    counted = out.labels != -100
    correct = out.correct if out.logits is None else ((out.logits.argmax(-1) == out.labels) & counted).sum()
    return torch.stack([out.loss_sum, correct.float(), counted.sum().float()])


@torch.no_grad()
def evaluate(model: Callable[..., Any], dataset: Dataset, collate: Callable, objective: str, batch_size: int,
             device: torch.device, seed: int, forward: Forward | None = None) -> dict[str, float]:
    """Batch b holds examples [b*B, (b+1)*B) and is masked with seed + b, whatever the world size.

    So the figures do not depend on how many ranks evaluate, and a reloaded model evaluated in one
    process sees exactly the batches the engine saw. Every rank runs the same number of forward
    passes (ZeRO-3 gathers parameters collectively inside forward); extra passes are not counted.
    `forward` is the training run's own (sparse MLM head); by default every position goes through the head.
    """
    forward = forward or Forward(model, objective, sparse=False)
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    n_batches = -(-len(dataset) // batch_size)
    rounds = -(-n_batches // world)
    totals = torch.zeros(3, device=device, dtype=torch.float64)
    was_training = getattr(model, "training", False)
    model.eval()
    for r in range(rounds):
        b = r * world + rank
        counted = b < n_batches
        b = b if counted else 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + b)
            batch = collate([dataset[i] for i in range(b * batch_size, min((b + 1) * batch_size, len(dataset)))])
        out = forward(model, batch, device)
        if counted:
            totals += token_stats(out).double()
    if was_training:
        model.train()
    if dist.is_initialized():
        dist.all_reduce(totals)
    loss_sum, correct, count = totals.tolist()
    loss = loss_sum / max(count, 1)
    return {"eval/loss": loss, "eval/perplexity": perplexity(loss), "eval/accuracy": correct / max(count, 1),
            "eval/tokens": int(count)}


class Evaluator:
    """When to evaluate (`should_eval`) and each validation set's figures (empty without one).

    A named set's figures are eval/<name>/loss, ...; the first named set's are also the plain eval/loss,
    ... that single-set runs log, so dashboards and comparisons keep working."""

    def __init__(self, sets: dict[str, Dataset], collate: Callable, objective: str, batch_size: int, seed: int,
                 eval_steps: int | None, forward: Forward | None = None) -> None:
        self.sets, self.collate, self.objective = sets, collate, objective
        self.batch_size, self.seed, self.eval_steps, self.forward = batch_size, seed, eval_steps, forward

    def should_eval(self, step: int, total: int) -> bool:
        """Every --eval_steps; the last step is evaluated by the end of the run, not here."""
        return bool(self.eval_steps) and step % self.eval_steps == 0 and step != total

    def __call__(self, engine: Any) -> dict[str, float]:
        figures: dict[str, float] = {}
        for name, dataset in self.sets.items():
            got = evaluate(engine, dataset, self.collate, self.objective, self.batch_size, engine.device, self.seed,
                           self.forward)
            if not figures:
                figures.update(got)
            if name:
                figures.update({f"eval/{name}/{key.removeprefix('eval/')}": value for key, value in got.items()})
        return figures
