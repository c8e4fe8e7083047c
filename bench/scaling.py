"""Scaling on CPU: tokens/s at 1 and 2 ranks.

The benchmark BERT of bench/train_bench.py, the same micro batch per rank, so 2 ranks do twice
the work per step; efficiency = tokens/s at 2 ranks / (2 x tokens/s at 1 rank). On 2 cores this is
2 ranks sharing 2 cores against 1 rank using both, not 2 machines. The GPU figures (MFU) are
bench/gpu.py's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench import common
from bench.train_bench import CASES, prepare


def tokens_per_second(out: Path) -> tuple[float, float | None]:
    """From step `first` to the last logged step (start-up and warm-up left out), and the last MFU."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "train/loss" in r]
    first, last = logged[0], logged[-1]
    tokens = last["train/tokens_seen"] - first["train/tokens_seen"]
    return tokens / (last["time"] - first["time"]), last.get("perf/mfu")


def dslm_run(work: Path, name: str, nproc: int, flags: list[str]) -> common.Measured:
    out = work / name
    m = common.measure(common.deepspeed_cmd(nproc, common.LAUNCH, "train", *flags, "--output_dir", str(out),
                                            "--overwrite_output_dir", "--report_to", "none", "--save_steps", "0",
                                            "--validation_split_percentage", "0", "--logging_first_step"))
    if m.returncode != 0:
        raise SystemExit(f"{name} failed ({m.returncode}):\n{m.output[-4000:]}")
    return m


def cpu_scaling(work: Path, args: argparse.Namespace) -> dict:
    paths = prepare(work, 8000)
    case = CASES["mlm"]
    flags = ["--model_type", case["family"], "--config_overrides", case["overrides"], "--tokenizer_name",
             str(paths[case["family"]]), "--train_file", str(paths["corpus"]), "--max_seq_length", "128",
             "--per_device_train_batch_size", "8", "--max_steps", str(args.steps), "--logging_steps", str(args.steps),
             "--cache_dir", str(work / "cache")]
    figures: dict[int, list[float]] = {1: [], 2: []}
    dslm_run(work, "warm", 2, flags)  # the cache and the JIT-built ops
    for repeat in range(args.repeats):
        for nproc in ((1, 2) if repeat % 2 == 0 else (2, 1)):
            dslm_run(work, f"n{nproc}", nproc, flags)
            figures[nproc].append(tokens_per_second(work / f"n{nproc}")[0])
            print(f"{nproc} rank(s) repeat {repeat}: {figures[nproc][-1]:.0f} tok/s", flush=True)
    one, two = common.median(figures[1]), common.median(figures[2])
    return {"tokens_per_second_1": one, "tokens_per_second_2": two, "efficiency": two / (2 * one), "runs": figures}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work_dir", default="/tmp/dslm-bench/scaling")
    p.add_argument("--out", default=str(common.ROOT / "bench" / "results" / "scaling.json"))
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine": common.machine(), "settings": vars(args), "cpu": cpu_scaling(work, args)}
    c = result["cpu"]
    print(common.table(["tok/s, 1 rank", "tok/s, 2 ranks", "2-rank efficiency"],
                       [[c["tokens_per_second_1"], c["tokens_per_second_2"], f"{c['efficiency']:.2f}"]]))
    common.write_json(args.out, result)


if __name__ == "__main__":
    main()
