"""Loop overhead: dslm's training step against a bare `engine(batch); engine.backward(loss); engine.step()`.

Both run in the same rank processes (launched by DeepSpeed's launcher), alternating, on engines
built by dslm's own code from the same flags, and on the same batches: the bare loop takes the
first batches of dslm's own DataLoader, collated before the clock starts, and the same forward
(the sparse MLM head included), so the difference is what dslm adds per step: data loading and
collation, token counting, the inf/NaN guard, the stop-flag agreement, logging and the progress bar.
Step time is measured from step `--warmup` to the last step, in both.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FLAGS = ["--model_type", "bert", "--config_overrides",
         "hidden_size=256,num_hidden_layers=4,num_attention_heads=4,intermediate_size=1024",
         "--max_seq_length", "128", "--per_device_train_batch_size", "8", "--validation_split_percentage", "0",
         "--save_steps", "0", "--report_to", "none", "--overwrite_output_dir"]


def bare_step_time(config, warmup: int, steps: int) -> float:
    """Seconds per optimizer step of the bare loop, on an engine and batches built by dslm's code."""
    from bench import engine as built
    from dslm import dist

    run, _ = built.build(config)
    # the loader gives lists of samples; dslm's loop collates them (masks drawn) in this process
    batches = [run.collate(samples) for samples, _ in zip(run.loader, range(steps), strict=False)]
    run.engine.train()
    for i, batch in enumerate(batches):
        if i == warmup:
            dist.barrier()
            start = time.perf_counter()
        loss = run.forward(run.engine, batch, run.engine.device).loss_sum
        run.engine.backward(loss)
        run.engine.step()
    float(loss)  # wait for the last step, as the logging step of dslm's loop does
    return (time.perf_counter() - start) / (len(batches) - warmup)


def dslm_step_time(config, warmup: int) -> float:
    """Seconds per step of dslm's own loop between its logging steps `warmup` and the last."""
    from dslm import dist, train

    train.run(config)
    if not dist.is_main():
        return float("nan")
    rows = [json.loads(line) for line in (Path(config.train.output_dir) / "metrics.jsonl").read_text().splitlines()]
    stamps = {r["step"]: r["time"] for r in rows if "train/loss" in r}
    first, last = min(stamps), max(stamps)
    return (stamps[last] - stamps[first]) / (last - first)


def rank_main(args: argparse.Namespace) -> None:
    from bench.engine import parse_flags
    from dslm import dist
    from dslm.config import RunConfig

    config = RunConfig.from_flags(**parse_flags(FLAGS + ["--max_steps", str(args.steps), "--logging_steps",
                                                         str(args.warmup), "--output_dir",
                                                         str(Path(args.work_dir) / "dslm"), "--cache_dir",
                                                         str(Path(args.work_dir) / "cache"), "--deepspeed",
                                                         args.deepspeed, *args.extra.split()]))
    dist.fill_launcher_env(os.environ)
    dist.init(config.train.dist_timeout)
    bare, ours = [], []
    for repeat in range(args.repeats):
        for kind in (("bare", "dslm") if repeat % 2 == 0 else ("dslm", "bare")):
            if kind == "bare":
                bare.append(bare_step_time(config, args.warmup, args.steps))
            else:
                ours.append(dslm_step_time(config, args.warmup))
    if dist.is_main():
        Path(args.result).write_text(json.dumps({"bare_step_s": bare, "dslm_step_s": ours}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work_dir", default="/tmp/dslm-bench/loop")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "loop.json"))
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--deepspeed", default="zero2")
    p.add_argument("--extra", default="", help="more dslm flags, e.g. '--dataloader_num_workers 1'")
    p.add_argument("--result", help=argparse.SUPPRESS)  # set when running as a rank
    p.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.result:
        rank_main(args)
        return
    from bench import common

    r = common.as_ranks(__file__, args, args.nproc)
    bare, ours = common.median(r["bare_step_s"]), common.median(r["dslm_step_s"])
    summary = {"machine": common.machine(), "settings": {k: v for k, v in vars(args).items() if k != "result"},
               "bare_step_s": bare, "dslm_step_s": ours, "overhead": ours / bare - 1, "runs": r}
    common.write_json(args.out, summary)
    print(f"{args.nproc} ranks, {args.deepspeed}, steps {args.warmup}..{args.steps}, median of {args.repeats} "
          f"alternating runs\n\n" + common.table(["bare loop s/step", "dslm loop s/step", "overhead"],
                                                 [[bare, ours, f"{100 * (ours / bare - 1):+.1f}%"]]))


if __name__ == "__main__":
    main()
