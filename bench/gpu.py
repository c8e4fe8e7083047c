"""GPU benchmarks, all that one short lease of a GPU machine runs: MFU, and dslm against the Trainer.

    python -m bench.gpu [--budget_s 480]

- MFU for GPT-2 124M at sequence 1024 and BERT-base at 512, bf16, one rank, ZeRO-1 (ds_configs/
  zero1.json: DeepSpeed's fused Adam). MFU = tokens/s x FLOPs per token / peak, with FLOPs per
  token PaLM-style = 6N + 12 L H T (N every parameter, embeddings included; L layers, H hidden
  size, T sequence length) and the peak 989 TFLOP/s, the dense bf16 figure of an H100 (and of an
  H200: the same chip with more memory).
- tokens/s of dslm against the HF Trainer (bench/hf_trainer.py, set up as run_clm.py) on GPT-2
  124M with the same JSON, model config, tokenizer, data, batch and bf16; with and without
  `--torch_compile` (the Trainer's `torch_compile=True`).

Runs go in priority order and each result is written as soon as it is in, so a lease that ends
early still leaves the figures measured so far; runs that would not fit `--budget_s` are skipped.
tokens/s is measured from the end of optimizer step 1 to the last step, as in bench/train_bench.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench import common, train_bench
from bench.corpus import base_documents

PEAK = 989e12  # dense bf16 FLOP/s, H100 SXM (the H200 has the same)

CASES = {
    "gpt2-124M": {"objective": "clm", "family": "gpt2", "hf_type": "gpt2", "seq": 1024, "micro": 32,
                  "overrides": "n_embd=768,n_layer=12,n_head=12,n_positions=1024,vocab_size=50257"},
    "bert-base": {"objective": "mlm", "family": "bert", "hf_type": "bert", "seq": 512, "micro": 64,
                  "overrides": "hidden_size=768,num_hidden_layers=12,num_attention_heads=12,intermediate_size=3072,"
                               "max_position_embeddings=512,vocab_size=30522"},
}
TINY = {  # --tiny: the same runs on a CPU with small models, to check this script before a lease
    "gpt2-124M": {**CASES["gpt2-124M"], "seq": 64, "micro": 4, "overrides": "n_embd=64,n_layer=2,n_head=2"},
    "bert-base": {**CASES["bert-base"], "seq": 64, "micro": 4,
                  "overrides": "hidden_size=64,num_hidden_layers=2,num_attention_heads=2,intermediate_size=128"},
}
# (side, case, extra flags), most wanted first.
PLAN = [("dslm", "gpt2-124M", []), ("hf", "gpt2-124M", []), ("dslm", "gpt2-124M", ["--torch_compile"]),
        ("dslm", "bert-base", []), ("hf", "gpt2-124M", ["--torch_compile"]), ("hf", "gpt2-124M", []),
        ("dslm", "gpt2-124M", []), ("dslm", "gpt2-124M", ["--torch_compile"]), ("hf", "gpt2-124M", ["--torch_compile"])]


def flops_per_token(case: dict) -> tuple[int, float]:
    """Parameters (counted on the meta device: nothing allocated) and training FLOPs per token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from dslm.metrics import flops_per_token as per_token

    config = CONFIG_MAPPING[case["hf_type"]]()
    config.update_from_string(case["overrides"])
    auto = AutoModelForCausalLM if case["objective"] == "clm" else AutoModelForMaskedLM
    with torch.device("meta"):
        n = sum(p.numel() for p in auto.from_config(config).parameters())
    return n, per_token(n, config.num_hidden_layers, config.hidden_size, case["seq"], case["objective"])


def prebuild_fused_adam() -> subprocess.Popen | None:
    """Start DeepSpeed's JIT build of fused Adam now, beside the data preparation, not in run 1."""
    import torch

    if not torch.cuda.is_available():
        return None
    code = "from deepspeed.ops.op_builder import FusedAdamBuilder; FusedAdamBuilder().load()"
    return subprocess.Popen([sys.executable, "-c", code])


def prepare(work: Path, mb: int, cases: dict) -> dict[str, Path]:
    """A text corpus of `mb` MB from bench/corpus.py's documents, and one tokenizer per family.
    The tokenizers are small (8000 entries); the models keep their real vocabulary sizes
    (`vocab_size` in the overrides), so the compute is that of the real models."""
    from dslm import tokenizer

    corpus = work / f"corpus-{mb}mb.txt"
    docs = base_documents()
    if not corpus.exists():
        # One document per line: the line-based text loaders of both sides see the same documents.
        lines = [" ".join(d.split()) for d in docs]
        size = sum(len(line.encode()) + 1 for line in lines)
        corpus.write_text("\n".join(lines * max(1, -(-mb * 1_000_000 // size))) + "\n")
    paths = {"corpus": corpus}
    for case in cases.values():
        path = work / f"tokenizer-{case['family']}"
        if not path.exists():
            tokenizer.train(case["family"], iter([docs[:2000]]), 8000).save_pretrained(str(path))
        paths[case["family"]] = path
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work_dir", default="/tmp/dslm-bench/gpu")
    p.add_argument("--out", default=str(common.ROOT / "bench" / "results" / "gpu.json"))
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--corpus_mb", type=int, default=8)
    p.add_argument("--budget_s", type=float, default=480, help="start no run after this many seconds")
    p.add_argument("--torch_adam", action="store_true", help="torch's AdamW instead of DeepSpeed's fused Adam")
    p.add_argument("--tiny", action="store_true", help="small models on a CPU: a check of this script")
    args = p.parse_args()
    t0 = time.time()
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    cases = TINY if args.tiny else CASES
    build = prebuild_fused_adam()
    paths = prepare(work, 1 if args.tiny else args.corpus_mb, cases)
    zero = "zero1"
    if args.torch_adam or (build is not None and build.wait() != 0):
        # Without DeepSpeed's fused Adam (it did not build here), both sides get torch's AdamW.
        print("using torch's AdamW (torch_adam) on both sides", flush=True)
        config = json.loads((common.ROOT / "ds_configs" / "zero1.json").read_text())
        config["optimizer"]["params"].update(torch_adam=True, adam_w_mode=True)
        zero = str(work / "zero1-torch-adam.json")
        Path(zero).write_text(json.dumps(config))
    print(f"prepared in {time.time() - t0:.0f}s", flush=True)
    result: dict = {"machine": common.machine(), "settings": vars(args), "peak_flops": PEAK, "runs": []}
    last_run_s = 0.0
    for side, name, extra in PLAN:
        if time.time() - t0 + 1.2 * last_run_s > args.budget_s:
            print(f"skipped {side} {name} {' '.join(extra)}: out of budget", flush=True)
            continue
        case = cases[name]
        run_args = argparse.Namespace(nproc=1, seq=case["seq"], micro=case["micro"], steps=args.steps)
        if side == "dslm":
            flags = [*([] if args.tiny else ["--bf16"]), *extra]
            cmd = train_bench.dslm_cmd(case, paths, work, run_args, zero, flags)
        else:
            cmd = train_bench.hf_cmd(case, paths, work, run_args, zero, [*([] if args.tiny else ["--bf16"]), *extra])
        started = time.time()
        m = common.measure(cmd, timeout=args.budget_s)
        last_run_s = time.time() - started
        if m.returncode != 0:
            print(f"{side} {name} {' '.join(extra)} failed ({m.returncode}):\n{m.output[-3000:]}", flush=True)
            result["runs"].append({"side": side, "model": name, "flags": extra, "failed": m.output[-3000:]})
            continue
        tokens_per_step = case["micro"] * case["seq"]
        if side == "dslm":
            f = train_bench.dslm_figures(m, work / f"dslm-{case['objective']}-{Path(zero).stem}", tokens_per_step)
        else:
            f = train_bench.hf_figures(m, work / "hf-result.json")
        n, per_token = flops_per_token(case)
        f.update(side=side, model=name, seq=case["seq"], micro=case["micro"], flags=extra, parameters=n,
                 flops_per_token=per_token, mfu=f["tokens_per_second"] * per_token / PEAK, wall_s=last_run_s)
        result["runs"].append(f)
        print(f"{side} {name} {' '.join(extra)}: {f['tokens_per_second']:,.0f} tok/s, MFU {f['mfu']:.3f}, "
              f"first step {f['first_step_s']:.1f}s, run {last_run_s:.0f}s", flush=True)
        common.write_json(args.out, result)
    common.write_json(args.out, result)
    print(report(result))


def report(result: dict) -> str:
    rows = [[r["side"], r["model"], r["seq"], r["micro"], " ".join(r["flags"]) or "-", r["tokens_per_second"],
             f"{r['mfu']:.3f}", r["first_step_s"]] for r in result["runs"] if "failed" not in r]
    return common.table(["side", "model", "seq", "micro batch", "flags", "tokens/s", "MFU", "first step s"], rows)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    main()
