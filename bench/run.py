"""Run every benchmark that applies to this machine, then write one table with the targets.

    python bench/run.py [--only data,train,train_compile,loop,checkpoint,zero3,scaling,gpu] [--quick] [--summary]

Each benchmark also runs alone (`python -m bench.train_bench --help`, ...). Their JSON goes to
bench/results/, and bench/results/summary.md gets the table below with the machine, date and
versions: the figures BENCHMARKS.md reports. `--quick` runs fewer steps and repeats (a smoke run:
its figures are not for reporting).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402

RESULTS = ROOT / "bench" / "results"
BENCHES = {  # name -> (command, quick extra flags)
    "data": (["bench/data_prep.py", "--json", str(RESULTS / "data_prep.json")], ["--min_mb", "5", "--repeats", "1"]),
    "train": (["-m", "bench.train_bench", "--out", str(RESULTS / "train.json")], ["--steps", "6", "--repeats", "1"]),
    "train_compile": (["-m", "bench.train_bench", "--zero", "zero2", "--repeats", "2", "--dslm_flags=--torch_compile",
                       "--out", str(RESULTS / "train_compile.json")], ["--steps", "6", "--repeats", "1"]),
    "loop": (["bench/loop_overhead.py", "--out", str(RESULTS / "loop.json")],
             ["--steps", "14", "--warmup", "4", "--repeats", "2"]),
    "checkpoint": (["bench/checkpoint_bench.py", "--out", str(RESULTS / "checkpoint.json")], ["--repeats", "1"]),
    "scaling": (["-m", "bench.scaling", "--out", str(RESULTS / "scaling.json")], ["--steps", "6", "--repeats", "1"]),
    "zero3": (["bench/zero3_memory.py", "--out", str(RESULTS / "zero3_memory.json")], ["--steps", "1"]),
    "gpu": (["-m", "bench.gpu", "--out", str(RESULTS / "gpu.json")], ["--steps", "20", "--budget_s", "200"]),
    "prep_memory": (["bench/prep_memory.py", "--json", str(RESULTS / "prep_memory.json")],
                    ["--sizes_gb", "0.05", "0.2"]),
    "stream_resume": (["bench/stream_resume.py", "--json", str(RESULTS / "stream_resume.json")],
                      ["--size_gb", "0.2", "--repeats", "1"]),
    "head_memory": (["-m", "bench.head_memory", "--out", str(RESULTS / "head_memory.json")],
                    ["--layers", "2", "--repeats", "1"]),
    "train_bf16": (["-m", "bench.train_bench", "--zero", "zero2", "--bf16", "--out", str(RESULTS / "train_bf16.json")],
                   ["--steps", "6", "--repeats", "1"]),
    "attention": (["-m", "bench.attention_bench", "--out", str(RESULTS / "attention.json")], ["--repeats", "1"]),
    "train_clm124m": (["-m", "bench.train_bench", "--objectives", "clm124m", "--zero", "zero2", "--seq", "1024",
                       "--micro", "2", "--steps", "3", "--repeats", "1", "--out", str(RESULTS / "train_clm124m.json")],
                      ["--steps", "2"]),
}


def applicable() -> list[str]:
    """Every benchmark, the GPU one only where torch sees a GPU."""
    import torch

    return [name for name in BENCHES if name != "gpu" or torch.cuda.is_available()]


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def gpu_rows(gpu: dict) -> list[list[str]]:
    """Medians over the runs of each (side, model, flags) in bench/gpu.py's results."""
    runs: dict[tuple[str, str, str], list[dict]] = {}
    for r in gpu["runs"]:
        if "failed" not in r:
            runs.setdefault((r["side"], r["model"], " ".join(r["flags"])), []).append(r)

    def med(side: str, model: str, flags: str, key: str) -> float | None:
        found = runs.get((side, model, flags))
        return common.median([r[key] for r in found]) if found else None

    rows = []
    for flags in ("", "--torch_compile"):
        dslm = med("dslm", "gpt2-124M", flags, "tokens_per_second")
        hf = med("hf", "gpt2-124M", flags, "tokens_per_second")
        label = f" {flags}" if flags else ""
        if dslm and hf:
            rows.append([f"GPU training tokens/s, gpt2-124M bf16{label}, dslm / Trainer", ">= 1.5", f"{dslm / hf:.2f}",
                         verdict(dslm / hf >= 1.5)])
        hf_eager = med("hf", "gpt2-124M", "", "tokens_per_second")
        if flags and dslm and hf_eager:
            rows.append([f"GPU training tokens/s, gpt2-124M bf16, dslm {flags} / Trainer (its default, eager)",
                         "(reported)", f"{dslm / hf_eager:.2f}", ""])
    dslm, hf = med("dslm", "gpt2-124M", "", "first_step_s"), med("hf", "gpt2-124M", "", "first_step_s")
    if dslm and hf:
        rows.append(["GPU time to first step, gpt2-124M bf16, dslm / Trainer", "<= 0.5", f"{dslm / hf:.2f}",
                     verdict(dslm / hf <= 0.5)])
    for model, seq in (("gpt2-124M", 1024), ("bert-base", 512)):
        for flags in ("", "--torch_compile"):
            mfu = med("dslm", model, flags, "mfu")
            if mfu is not None:
                target = ">= 0.45" if model.startswith("gpt2") else "(reported)"
                rows.append([f"GPU MFU, dslm {model} seq {seq} bf16{' ' + flags if flags else ''}", target,
                             f"{mfu:.3f}", verdict(mfu >= 0.45) if model.startswith("gpt2") else ""])
    return rows


def summary() -> str:
    rows = []
    train = load("train")
    if train:
        for c in train["cases"]:
            rows.append([f"training tokens/s, {c['objective']} {c['zero']}, dslm / Trainer", ">= 1.2",
                         f"{c['throughput_ratio']:.2f}", verdict(c["throughput_ratio"] >= 1.2)])
        for c in train["cases"]:
            rows.append([f"time to first step, {c['objective']} {c['zero']}, dslm / Trainer", "<= 0.5",
                         f"{c['first_step_ratio']:.2f}", verdict(c["first_step_ratio"] <= 0.5)])
        for c in train["cases"]:
            rows.append([f"peak memory per rank, {c['objective']} {c['zero']}, dslm / Trainer", "(reported)",
                         f"{c['memory_ratio']:.2f}", ""])
    bf16 = load("train_bf16")  # bench.train_bench --bf16: both sides in bf16
    if bf16:
        for c in bf16["cases"]:
            rows.append([f"training tokens/s, {c['objective']} {c['zero']} bf16, dslm / Trainer", ">= 1.2",
                         f"{c['throughput_ratio']:.2f}", verdict(c["throughput_ratio"] >= 1.2)])
    big = load("train_clm124m")
    if big:
        for c in big["cases"]:
            rows.append(["peak memory per rank, GPT-2 124M seq 1024 micro 2, dslm / Trainer", "<= 0.6",
                         f"{c['memory_ratio']:.2f}", verdict(c["memory_ratio"] <= 0.6)])
            rows.append(["training tokens/s, GPT-2 124M seq 1024 micro 2, dslm / Trainer", "(reported)",
                         f"{c['throughput_ratio']:.2f}", ""])
    attn = load("attention")
    if attn:
        for c in attn["cases"]:
            rows.append([f"attention with dropout, {c['shape']}, block / SDPA: time; kept for the backward",
                         "(reported)", f"{c['time_ratio']:.2f}; {c['kept_ratio']:.2f}", ""])
    compiled = load("train_compile")  # bench.train_bench --dslm_flags=--torch_compile
    if compiled:
        for c in compiled["cases"]:
            rows.append([f"training tokens/s, {c['objective']} {c['zero']}, dslm --torch_compile / Trainer (eager)",
                         "(reported)", f"{c['throughput_ratio']:.2f}", ""])
    data = load("data_prep")
    if data:
        for r in data["results"]:
            rows.append([f"data preparation, {r['objective']}, dslm / run_*lm.py", ">= 2",
                         f"{r['dslm_vs_run_lm']:.2f}", verdict(r["dslm_vs_run_lm"] >= 2)])
            rows.append([f"data preparation, {r['objective']}, dslm / encode_batch", ">= 0.70",
                         f"{r['dslm_vs_encode_batch']:.2f}", verdict(r["dslm_vs_encode_batch"] >= 0.7)])
    prep = load("prep_memory")
    if prep:
        mine = [r for r in prep["results"] if r["side"] == "dslm"]
        if len(mine) >= 2:
            big, small = mine[-1], mine[0]
            ratio = big["peak_rss_mb"] / small["peak_rss_mb"]
            rows.append([f"dslm prepare peak RSS, {big['corpus_gb']:.1f} GB / {small['corpus_gb']:.1f} GB corpus",
                         "<= 1.2", f"{ratio:.2f}", verdict(ratio <= 1.2)])
            rows.append([f"dslm prepare peak RSS, {big['corpus_gb']:.1f} GB corpus", "< 2 GB",
                         f"{big['peak_rss_mb']:,.0f} MB", verdict(big["peak_rss_mb"] < 2048)])
    stream = load("stream_resume")
    if stream:
        rows.append(["stream resume, start to first step, at 50% / at 1% of the stream", "<= 1.5",
                     f"{stream['ratio']:.2f}", verdict(stream["ratio"] <= 1.5)])
    loop = load("loop")
    if loop:
        rows.append(["loop overhead, dslm step / bare step - 1", "<= 3%", f"{100 * loop['overhead']:+.1f}%",
                     verdict(loop["overhead"] <= 0.03)])
    ckpt = load("checkpoint")
    if ckpt:
        rows.append(["checkpoint save / disk sequential write", ">= 0.5", f"{ckpt['save_vs_disk']:.2f}",
                     verdict(ckpt["save_vs_disk"] >= 0.5)])
    zero3 = load("zero3_memory")
    if zero3:
        rows.append(["peak RSS per rank building and training 303M params, ZeRO-3, partitioned / whole build",
                     "<= 0.7", f"{zero3['build_and_train_ratio']:.2f}", verdict(zero3["build_and_train_ratio"] <= 0.7)])
        rows.append(["peak RSS per rank building 303M params, ZeRO-3, partitioned / whole build", "(reported)",
                     f"{zero3['build_ratio']:.2f}", ""])
    scaling = load("scaling")
    if scaling and "cpu" in scaling:
        rows.append(["CPU tokens/s, 2 ranks / (2 x 1 rank)", "(reported)", f"{scaling['cpu']['efficiency']:.2f}", ""])
    gpu = load("gpu")
    if gpu:
        rows += gpu_rows(gpu)
    m = common.machine()
    head = (f"{m['date']}; {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB; GPU: {m['gpu'] or 'none'}; "
            f"python {m['python']}; " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v))
    text = head + "\n\n" + common.table(["figure", "target", "measured", ""], rows)
    if gpu:  # measured on a lent machine, not this one
        g = gpu["machine"]
        versions = ", ".join(f"{k} {v}" for k, v in g["versions"].items() if v)
        text += (f"\n\nGPU rows: {g['gpu']}, {g['date']}; {versions}; medians of {len(gpu['runs'])} runs in all "
                 "(bench/results/gpu.json).")
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=None, help="comma-separated names; default: all that apply here")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--summary", action="store_true", help="only rewrite summary.md from the JSON already there")
    args = p.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in [] if args.summary else args.only.split(",") if args.only else applicable():
        cmd, quick = BENCHES[name]
        print(f"== {name}", flush=True)
        proc = subprocess.run([sys.executable, *cmd, *(quick if args.quick else [])], cwd=ROOT)
        if proc.returncode != 0:
            raise SystemExit(f"benchmark {name} failed ({proc.returncode})")
    text = summary()
    (RESULTS / "summary.md").write_text(text + "\n")
    print("\n" + text)


if __name__ == "__main__":
    main()
