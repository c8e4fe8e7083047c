"""Checkpoint save and load throughput against the disk's own sequential write speed, in one run.

Run by the ranks of a DeepSpeed launch: each repeat first writes, on every rank at once, as many
bytes as one checkpoint holds (its share, 4 MiB writes, then fsync: what the disk sustains), then
saves a real checkpoint with dslm's Checkpointer (DeepSpeed's shards, RNG states, SHA-256
manifest, commit, all files fsynced), then loads it as a resume does (every rank checks its share
of the manifest's checksums, then DeepSpeed's load). MB/s = checkpoint bytes / seconds. Before
each load the page cache is dropped when this process may (root), so the load reads the disk.
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

FLAGS = ["--model_type", "gpt2", "--config_overrides", "n_embd=768,n_layer=6,n_head=12",
         "--max_seq_length", "128", "--per_device_train_batch_size", "2", "--validation_split_percentage", "0",
         "--max_steps", "10", "--report_to", "none", "--overwrite_output_dir"]


def write_speed(directory: Path, nbytes: int, rank: int) -> float:
    """Seconds to write `nbytes` sequentially and fsync them (this rank's share, all ranks at once)."""
    from dslm import dist

    block = os.urandom(4 << 20)  # incompressible
    path = directory / f"disk-test-{rank}"
    dist.barrier()
    start = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(max(1, nbytes // len(block))):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    dist.barrier()
    seconds = time.perf_counter() - start
    path.unlink()
    return seconds


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def rank_main(args: argparse.Namespace) -> None:
    import torch

    from bench.engine import build, parse_flags
    from dslm import checkpoint, dist
    from dslm.config import RunConfig
    from dslm.progress import Progress

    out = Path(args.work_dir) / "run"
    config = RunConfig.from_flags(**parse_flags(FLAGS + ["--output_dir", str(out), "--cache_dir",
                                                         str(Path(args.work_dir) / "cache"), "--deepspeed",
                                                         args.deepspeed]))
    dist.fill_launcher_env(os.environ)
    dist.init(30)
    run, ds = build(config)
    batch = next(iter(run.loader))  # one real step, so the optimizer state exists and is saved
    run.engine.backward(run.forward(run.engine, batch, run.engine.device).loss_sum)
    run.engine.step()
    ckpt = checkpoint.Checkpointer(checkpoint.Checkpoints(out, "bench"), {"zero_stage": checkpoint_stage(ds)},
                                   save_steps=0, limit=1, milestone=None)
    rows = []
    for repeat in range(args.repeats):
        step = repeat + 1
        start = time.perf_counter()
        tag_dir = ckpt.save(run.engine, run.module, run.prepared.tokenizer, Progress(step=step))
        save_s = time.perf_counter() - start
        size = checkpoint.size_of(tag_dir)
        disk_s = write_speed(out, size // dist.world_size(), dist.rank())
        dropped = dist.all_gather_object(drop_page_cache() if dist.local_rank() == 0 else True)
        dist.barrier()
        start = time.perf_counter()
        problem = checkpoint.verify_together(tag_dir)  # as a resume verifies: every rank reads its share
        with checkpoint.quiet():
            loaded, _ = run.engine.load_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
        dist.barrier()
        load_s = time.perf_counter() - start
        assert loaded is not None and problem is None, problem
        rows.append({"bytes": size, "save_s": save_s, "load_s": load_s, "disk_write_s": disk_s,
                     "cache_dropped": all(dropped)})
    torch.distributed.barrier()
    if dist.is_main():
        Path(args.result).write_text(json.dumps(rows))


def checkpoint_stage(ds: dict) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work_dir", default="/tmp/dslm-bench/checkpoint")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "checkpoint.json"))
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--deepspeed", default="zero2")
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.result:
        rank_main(args)
        return
    from bench import common

    common.fresh_dir(Path(args.work_dir))
    rows = common.as_ranks(__file__, args, args.nproc)
    mb = rows[0]["bytes"] / 2**20
    disk = common.median([mb / r["disk_write_s"] for r in rows])
    save = common.median([mb / r["save_s"] for r in rows])
    load = common.median([mb / r["load_s"] for r in rows])
    summary = {"machine": common.machine(), "settings": {k: v for k, v in vars(args).items() if k != "result"},
               "checkpoint_mb": mb, "disk_write_mb_s": disk, "save_mb_s": save, "load_mb_s": load,
               "save_vs_disk": save / disk, "cache_dropped": all(r["cache_dropped"] for r in rows), "runs": rows}
    common.write_json(args.out, summary)
    print(f"{args.nproc} ranks, {args.deepspeed}, checkpoint {mb:.0f} MB, median of {args.repeats}\n\n" + common.table(
        ["disk write MB/s (fsync)", "dslm save MB/s", "save / disk", "dslm load MB/s", "page cache dropped"],
        [[disk, save, f"{save / disk:.2f}", load, summary["cache_dropped"]]]))


if __name__ == "__main__":
    main()
