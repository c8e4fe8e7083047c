"""ZeRO-3's partitioned build: peak RSS per rank while building and training a ~300M-parameter model on 2
ranks, built partitioned (dslm: DeepSpeed's zero.Init through transformers) against built whole on every
rank and partitioned only by deepspeed.initialize (what dslm did before).

    python bench/zero3_memory.py [--repeats 1] [--steps 2]

Both sides run the same `dslm train` command (GPT-2 config, n_embd 1024, 20 layers, vocabulary 50,257:
303M parameters; sequence 128, micro batch 1, ZeRO-3, fp32), alternating. The peak is each rank's VmHWM
read when training ends, before the final export (bench/zero3/sitecustomize.py records it; the export
consolidates the whole model on rank 0 either way).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402

MODEL = "n_embd=1024,n_layer=20,n_head=16,vocab_size=50257"


def one_run(work: Path, whole: bool, steps: int) -> dict[str, object]:
    run_dir = common.fresh_dir(work / ("whole" if whole else "partitioned"))
    peaks = common.fresh_dir(run_dir / "peaks")
    cmd = common.deepspeed_cmd(2, common.LAUNCH, "train", "--model_type", "gpt2", "--config_overrides", MODEL,
                               "--deepspeed", "zero3", "--max_seq_length", "128", "--per_device_train_batch_size",
                               "1", "--max_steps", str(steps), "--logging_steps", "1", "--max_eval_samples", "2",
                               "--per_device_eval_batch_size", "1", "--report_to", "none", "--save_steps", "0",
                               "--vocab_size", "2000", "--output_dir", str(run_dir / "out"),
                               "--cache_dir", str(work / "cache"))
    env = {"PYTHONPATH": str(ROOT / "bench" / "zero3"), "DSLM_BENCH_PEAK_DIR": str(peaks),
           "DSLM_BENCH_WHOLE_BUILD": "1" if whole else "0"}
    m = common.measure(cmd, env=env)
    if m.returncode != 0:
        raise SystemExit(f"dslm failed ({m.returncode}):\n{m.output[-4000:]}")
    per_rank = [int((peaks / f"rank-{r}.txt").read_text()) / 1024 for r in range(2)]
    build = [int((peaks / f"rank-{r}-build.txt").read_text()) / 1024 for r in range(2)]
    params = next((line for line in m.output.splitlines() if "M params" in line), "")
    return {"whole_build": whole, "peak_rss_mb_per_rank": per_rank, "build_peak_rss_mb_per_rank": build,
            "wall_s": m.wall_s, "peak_rss_mb_with_export": m.peak_rss_mb, "start_line": params.strip()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work_dir", default="/tmp/dslm-bench/zero3")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "zero3_memory.json"))
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--steps", type=int, default=2)
    args = p.parse_args()
    work = Path(args.work_dir)
    runs = []
    for repeat in range(args.repeats):
        for whole in ((False, True) if repeat % 2 == 0 else (True, False)):
            runs.append(one_run(work, whole, args.steps))
            print(runs[-1], flush=True)
    def peak(key: str, whole: bool) -> float:  # the larger rank's, median over the repeats
        return common.median([max(r[key]) for r in runs if r["whole_build"] == whole])

    figures = {phase: (peak(key, False), peak(key, True)) for phase, key in
               (("build", "build_peak_rss_mb_per_rank"), ("build and train", "peak_rss_mb_per_rank"))}
    summary = {"machine": common.machine(), "settings": vars(args), "model": MODEL,
               **{f"{phase.replace(' ', '_')}_ratio": a / b for phase, (a, b) in figures.items()},
               "peaks_mb": {phase: {"partitioned": a, "whole": b} for phase, (a, b) in figures.items()}, "runs": runs}
    common.write_json(args.out, summary)
    print(common.table(["peak RSS per rank, MB (the larger rank)", "partitioned (zero.Init)", "whole on every rank",
                        "ratio"], [[phase, a, b, f"{a / b:.2f}"] for phase, (a, b) in figures.items()]))


if __name__ == "__main__":
    main()
