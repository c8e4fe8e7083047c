"""The chunked head against the plain one: peak RSS and time of one forward and backward of a causal LM.

Each side runs in a fresh process (peak RSS is the process's own, from the kernel's rusage) on the
same model (GPT-2 124M by default, 50,257-entry vocabulary), the same random tokens and the same
dslm Forward, only `chunked` differs; sides alternate, medians are reported. With `--dropout 0`
CPU's SDPA takes its flash kernel and keeps no attention probabilities, which shows the head's
share of the rest.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from bench import common

SIDE = r"""
import json, resource, sys, time, torch
from transformers import AutoConfig, AutoModelForCausalLM
from dslm import objectives
chunked, dropout, layers, hidden, heads, vocab, micro, seq = json.loads(sys.argv[1])
torch.manual_seed(0)
config = AutoConfig.for_model("gpt2", n_layer=layers, n_embd=hidden, n_head=heads, vocab_size=vocab,
                              attn_pdrop=dropout, resid_pdrop=dropout, embd_pdrop=dropout)
model = AutoModelForCausalLM.from_config(config).train()
forward = objectives.Forward(model, "clm", chunked=chunked)
ids = torch.randint(0, vocab, (micro, seq))
batch = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
start = time.perf_counter()
out = forward(model, batch, torch.device("cpu"))
out.loss_sum.backward()
seconds = time.perf_counter() - start
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "before_mb": before,
                  "seconds": seconds, "loss": float(out.loss_sum.detach())}))
"""


def run_side(chunked: bool, args: argparse.Namespace) -> dict:
    spec = json.dumps([chunked, args.dropout, args.layers, args.hidden, args.heads, args.vocab, args.micro, args.seq])
    out = subprocess.run([sys.executable, "-c", SIDE, spec], capture_output=True, text=True, cwd=common.ROOT,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--micro", type=int, default=2)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=str(common.ROOT / "bench" / "results" / "head_memory.json"))
    args = p.parse_args()
    runs: dict[str, list[dict]] = {"plain": [], "chunked": []}
    for repeat in range(args.repeats):
        for side in (("plain", "chunked") if repeat % 2 == 0 else ("chunked", "plain")):
            r = run_side(side == "chunked", args)
            runs[side].append(r)
            print(f"{side} repeat {repeat}: peak {r['peak_rss_mb']:.0f} MB, {r['seconds']:.1f} s, loss {r['loss']:.2f}",
                  flush=True)
    med = {side: {k: common.median([r[k] for r in rs]) for k in ("peak_rss_mb", "seconds")}
           for side, rs in runs.items()}
    result = {"machine": common.machine(), "settings": vars(args), "runs": runs, "medians": med,
              "memory_ratio": med["chunked"]["peak_rss_mb"] / med["plain"]["peak_rss_mb"],
              "time_ratio": med["chunked"]["seconds"] / med["plain"]["seconds"]}
    common.write_json(args.out, result)
    print(common.table(["side", "peak RSS MB", "forward + backward s"],
                       [[side, m["peak_rss_mb"], m["seconds"]] for side, m in med.items()]))
    print(f"chunked / plain: memory {result['memory_ratio']:.2f}, time {result['time_ratio']:.2f}")


if __name__ == "__main__":
    main()
