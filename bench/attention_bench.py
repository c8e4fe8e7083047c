"""The block attention against SDPA with dropout on a CPU: time of one forward and backward, and what each
keeps for the backward.

Both sides get the same q, k, v and attention dropout (0.1); SDPA takes its math path there (its flash
kernel takes no dropout on CPUs). Kept bytes are counted by autograd's saved-tensor hooks, so they show what
the backward holds per layer, independent of the allocator. One thread, as each of 2 ranks on 2 cores has;
sides alternate, medians of `--repeats`.
"""

from __future__ import annotations

import argparse
import time

import torch

from bench import common
from dslm import attention, profile

SHAPES = {  # batch, heads, sequence, head size, causal
    "gpt2-124m-1024": (2, 12, 1024, 64, True),
    "gpt2-small-128": (8, 4, 128, 64, True),
    "bert-small-128": (8, 4, 128, 64, False),
    "bert-base-512": (4, 12, 512, 64, False),
}


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, dropout: float) -> torch.Tensor:
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=causal)


def blocks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, dropout: float) -> torch.Tensor:
    return attention.BlockAttention.apply(q, k, v, None, causal, dropout, q.shape[-1] ** -0.5)


def measure(fn, shape: tuple, dropout: float) -> tuple[float, int]:
    b, h, t, d, causal = shape
    q, k, v = (torch.randn(b, h, t, d, requires_grad=True) for _ in range(3))
    start = time.perf_counter()
    out, kept = profile.kept_for_backward(lambda: fn(q, k, v, causal, dropout))
    out.sum().backward()
    return time.perf_counter() - start, kept


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--out", default=str(common.ROOT / "bench" / "results" / "attention.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    results = {"machine": common.machine(), "settings": vars(args), "cases": []}
    rows = []
    for name, shape in SHAPES.items():
        runs: dict[str, list[tuple[float, int]]] = {"sdpa": [], "blocks": []}
        for side in ("sdpa", "blocks"):  # warm-up, not counted
            measure(sdpa if side == "sdpa" else blocks, shape, args.dropout)
        for repeat in range(args.repeats):
            for side in (("sdpa", "blocks") if repeat % 2 == 0 else ("blocks", "sdpa")):
                runs[side].append(measure(sdpa if side == "sdpa" else blocks, shape, args.dropout))
        case = {"shape": name, "batch_heads_seq_dim_causal": shape}
        for side, rs in runs.items():
            case[f"{side}_s"] = common.median([r[0] for r in rs])
            case[f"{side}_kept_mb"] = rs[0][1] / 2**20
        case["time_ratio"] = case["blocks_s"] / case["sdpa_s"]
        case["kept_ratio"] = case["blocks_kept_mb"] / case["sdpa_kept_mb"]
        results["cases"].append(case)
        rows.append([name, case["sdpa_s"] * 1e3, case["blocks_s"] * 1e3, case["time_ratio"], case["sdpa_kept_mb"],
                     case["blocks_kept_mb"], case["kept_ratio"]])
        print(f"{name}: sdpa {case['sdpa_s'] * 1e3:.1f} ms, blocks {case['blocks_s'] * 1e3:.1f} ms", flush=True)
    common.write_json(args.out, results)
    print(common.table(["shape", "SDPA ms", "blocks ms", "ratio", "SDPA kept MB", "blocks kept MB", "ratio"], rows))


if __name__ == "__main__":
    main()
