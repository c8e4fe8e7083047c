"""Training throughput, time to first optimizer step and peak memory: dslm against the HF Trainer.

Both sides get the same DeepSpeed JSON, model config, tokenizer, data file, sequence length,
global batch and precision, and run as whole processes under the same launcher (`deepspeed
--num_gpus N`). The Trainer side is bench/hf_trainer.py, set up as run_mlm.py / run_clm.py set
it up. Each case runs once per side to warm the caches (tokenized data, JIT-built ops), then
`--repeats` times per side, alternating which side goes first, and the medians are compared.

- tokens/s: tokens per optimizer step x (steps - 1) / (time at the last step - time at step 1),
  so start-up and the first step's warm-up are left out;
- time to first step: from the launch command's start to the end of optimizer step 1 (launch), and
  from the rank process's own start (rank), which leaves out the launcher's start-up that both share;
- peak RSS: the largest process's peak resident memory (one rank), from the kernel's rusage.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench import common

CASES = {
    "mlm": {"objective": "mlm", "family": "bert", "hf_type": "bert",
            "overrides": "hidden_size=256,num_hidden_layers=4,num_attention_heads=4,intermediate_size=1024"},
    "clm": {"objective": "clm", "family": "gpt2", "hf_type": "gpt2", "overrides": "n_embd=256,n_layer=4,n_head=4"},
    # GPT-2 124M with its own 50,257-entry vocabulary (the tokenizer's ids are a subset): the head's memory
    "clm124m": {"objective": "clm", "family": "gpt2", "hf_type": "gpt2",
                "overrides": "n_embd=768,n_layer=12,n_head=12,vocab_size=50257"},
}


def prepare(work: Path, vocab_size: int) -> dict[str, Path]:
    """The data file (the built-in corpus) and one tokenizer per family, trained once, used by both sides."""
    from dslm import tokenizer
    from dslm.data.sources import builtin_texts

    texts = builtin_texts()
    corpus = work / "corpus.txt"
    if not corpus.exists():
        corpus.write_text("\n".join(texts))
    paths = {"corpus": corpus}
    for case in CASES.values():
        path = work / f"tokenizer-{case['family']}"
        if not path.exists():
            tokenizer.train(case["family"], iter([texts]), vocab_size).save_pretrained(str(path))
        paths[case["family"]] = path
    return paths


def vocab_of(path: Path) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(str(path)))


def dslm_cmd(case: dict, paths: dict[str, Path], work: Path, args: argparse.Namespace, zero: str,
             extra: list[str]) -> list[str]:
    return common.deepspeed_cmd(
        args.nproc, common.LAUNCH, "train", "--model_type", case["family"], "--config_overrides", case["overrides"],
        "--tokenizer_name", str(paths[case["family"]]), "--train_file", str(paths["corpus"]),
        "--validation_split_percentage", "0", "--deepspeed", zero, "--max_seq_length", str(args.seq),
        "--per_device_train_batch_size", str(args.micro), "--max_steps", str(args.steps),
        "--logging_steps", str(args.steps), "--logging_first_step", "--save_steps", "0", "--report_to", "none",
        "--output_dir", str(work / f"dslm-{case['objective']}-{Path(zero).stem}"), "--overwrite_output_dir",
        "--cache_dir", str(work / "dslm-cache"), *extra)


def ds_json(zero: str) -> str:
    """A shipped config's name (zero2) or a JSON file's path, as dslm's --deepspeed takes them."""
    return zero if zero.endswith(".json") else str(common.ROOT / "ds_configs" / f"{zero}.json")


def hf_cmd(case: dict, paths: dict[str, Path], work: Path, args: argparse.Namespace, zero: str,
           extra: list[str] = ()) -> list[str]:
    objective, tok = case["objective"], paths[case["family"]]
    # run_*lm.py from scratch keep the config's own vocabulary (30522 for bert, 50257 for gpt2) unless
    # told otherwise; the same vocabulary as dslm's model keeps the work equal.
    overrides = case["overrides"]
    if "vocab_size=" not in overrides:
        overrides += f",vocab_size={vocab_of(tok)}"
    if objective == "clm":
        from transformers import AutoTokenizer

        t = AutoTokenizer.from_pretrained(str(tok))
        overrides += f",bos_token_id={t.bos_token_id},eos_token_id={t.eos_token_id}"
    return common.deepspeed_cmd(
        args.nproc, str(common.ROOT / "bench" / "hf_trainer.py"), "--objective", objective, "--model_type",
        case["hf_type"], "--config_overrides", overrides, "--tokenizer_name", str(tok), "--train_file",
        str(paths["corpus"]), "--deepspeed", ds_json(zero), "--max_seq_length",
        str(args.seq), "--per_device_train_batch_size", str(args.micro), "--max_steps", str(args.steps),
        "--output_dir", str(work / f"hf-{objective}-{Path(zero).stem}"), "--cache_dir", str(work / "hf-cache"),
        "--out", str(work / "hf-result.json"), *extra)


def dslm_figures(m: common.Measured, out_dir: Path, tokens_per_step: int) -> dict[str, float]:
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r for r in rows if "train/loss" in r}
    first, last = min(logged), max(logged)
    return {"tokens_per_second": tokens_per_step * (last - first) / (logged[last]["time"] - logged[first]["time"]),
            "first_step_s": logged[first]["time"] - m.started, "rank_first_step_s": logged[first]["perf/elapsed_s"],
            "peak_rss_mb": m.peak_rss_mb}


def hf_figures(m: common.Measured, result: Path) -> dict[str, float]:
    r = json.loads(result.read_text())
    times = r["step_times"]
    return {"tokens_per_second": r["tokens_per_step"] * (len(times) - 1) / (times[-1] - times[0]),
            "first_step_s": times[0] - m.started, "rank_first_step_s": times[0] - r["process_start"],
            "peak_rss_mb": m.peak_rss_mb, "parameters": r["parameters"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work_dir", default="/tmp/dslm-bench/train")
    p.add_argument("--out", default=str(common.ROOT / "bench" / "results" / "train.json"))
    p.add_argument("--objectives", default="mlm,clm")
    p.add_argument("--zero", default="zero2,zero3")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--micro", type=int, default=8)
    p.add_argument("--vocab_size", type=int, default=8000)
    p.add_argument("--dslm_flags", default="", help="extra dslm flags, e.g. --torch_compile")
    p.add_argument("--bf16", action="store_true", help="both sides in bf16 mixed precision")
    args = p.parse_args()
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    paths = prepare(work, args.vocab_size)
    tokens_per_step = args.micro * args.nproc * args.seq
    results = {"machine": common.machine(), "settings": vars(args), "cases": []}
    both = ["--bf16"] if args.bf16 else []
    for objective in args.objectives.split(","):
        for zero in args.zero.split(","):
            sides = {"dslm": lambda o=objective, z=zero: dslm_cmd(CASES[o], paths, work, args, z,
                                                                  [*args.dslm_flags.split(), *both]),
                     "hf": lambda o=objective, z=zero: hf_cmd(CASES[o], paths, work, args, z, both)}
            figures: dict[str, list[dict]] = {"dslm": [], "hf": []}
            for repeat in range(args.repeats + 1):  # repeat 0 warms caches and JIT builds: not counted
                order = ["dslm", "hf"] if repeat % 2 == 0 else ["hf", "dslm"]
                for side in order:
                    cmd = sides[side]()
                    m = common.measure(cmd)
                    if m.returncode != 0:
                        raise SystemExit(f"{side} {objective} {zero} failed ({m.returncode}):\n{m.output[-4000:]}")
                    out_dir = work / f"dslm-{CASES[objective]['objective']}-{zero}"
                    f = (dslm_figures(m, out_dir, tokens_per_step) if side == "dslm"
                         else hf_figures(m, work / "hf-result.json"))
                    print(f"{objective} {zero} {side} repeat {repeat}: {f['tokens_per_second']:.0f} tok/s, first step "
                          f"{f['first_step_s']:.1f}s (rank {f['rank_first_step_s']:.1f}s), peak "
                          f"{f['peak_rss_mb']:.0f} MB", flush=True)
                    if repeat:
                        figures[side].append(f)
            case = {"objective": objective, "zero": zero}
            for side in ("dslm", "hf"):
                for key in ("tokens_per_second", "first_step_s", "rank_first_step_s", "peak_rss_mb"):
                    case[f"{side}_{key}"] = common.median([f[key] for f in figures[side]])
                case[f"{side}_runs"] = figures[side]
            case["throughput_ratio"] = case["dslm_tokens_per_second"] / case["hf_tokens_per_second"]
            case["first_step_ratio"] = case["dslm_first_step_s"] / case["hf_first_step_s"]
            case["rank_first_step_ratio"] = case["dslm_rank_first_step_s"] / case["hf_rank_first_step_s"]
            case["memory_ratio"] = case["dslm_peak_rss_mb"] / case["hf_peak_rss_mb"]
            results["cases"].append(case)
    common.write_json(args.out, results)
    print(report(results))


def report(results: dict) -> str:
    rows = [[c["objective"], c["zero"], c["dslm_tokens_per_second"], c["hf_tokens_per_second"], c["throughput_ratio"],
             c["dslm_first_step_s"], c["hf_first_step_s"], c["first_step_ratio"], c["dslm_rank_first_step_s"],
             c["hf_rank_first_step_s"], c["rank_first_step_ratio"], c["dslm_peak_rss_mb"], c["hf_peak_rss_mb"],
             c["memory_ratio"]] for c in results["cases"]]
    s = results["settings"]
    head = (f"{s['nproc']} ranks, {'bf16' if s.get('bf16') else 'fp32'}, seq {s['seq']}, micro batch {s['micro']}, "
            f"{s['steps']} steps, median of "
            f"{s['repeats']} alternating runs per side")
    return head + "\n\n" + common.table(
        ["objective", "ZeRO", "dslm tok/s", "Trainer tok/s", "ratio", "dslm first step s (launch)",
         "Trainer first step s (launch)", "ratio", "dslm first step s (rank)", "Trainer first step s (rank)", "ratio",
         "dslm peak MB/rank", "Trainer peak MB/rank", "ratio"], rows)


if __name__ == "__main__":
    main()
