"""What resuming a stream costs: a --streaming run resumed near the start and in the middle of its stream.

    python bench/stream_resume.py [--size_gb 0.5] [--repeats 3] [--json bench/results/stream_resume.json]

The stream is `bench/prep_memory.py`'s text corpus (a line is a row). A first run (tiny GPT-2, one
rank, `--streaming --max_steps 2`) trains the tokenizer and commits a checkpoint at step 2. For each
point, a copy of that output directory gets its reader's recorded position moved to the first line at
1% or at 50% of the file (what a checkpoint taken there records: a byte offset and no carried tokens),
and the same command with `--max_steps 3` resumes it, takes one step, and exits. The figure is that
run's wall time, start to exit (imports, resume, the seek, one text batch tokenized, one step, the final
save): the two points alternate, medians reported. A reader that re-read its stream to find its place
would take longer the further in it was.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, machine, measure, table, write_json  # noqa: E402
from bench.prep_memory import text_corpus  # noqa: E402

TINY = ["--model_type", "gpt2", "--config_overrides", "n_embd=64,n_layer=2,n_head=2", "--vocab_size", "2000",
        "--max_seq_length", "128", "--per_device_train_batch_size", "4", "--logging_steps", "1", "--save_steps", "2",
        "--report_to", "none", "--deepspeed", "ds_configs/zero0.json"]


def line_start(path: Path, fraction: float) -> int:
    with open(path, "rb") as f:
        f.seek(int(path.stat().st_size * fraction))
        f.readline()
        return f.tell()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size_gb", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--points", type=float, nargs="+", default=[0.01, 0.5])
    parser.add_argument("--data_dir", default=str(Path(tempfile.gettempdir()) / "dslm-bench-prep"))
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "stream_resume.json"))
    args = parser.parse_args()
    data = text_corpus(args.size_gb, Path(args.data_dir))
    work = Path(tempfile.mkdtemp(prefix="dslm-bench-stream-"))
    try:
        base = work / "base"
        flags = [*TINY, "--streaming", "--train_file", str(data), "--cache_dir", str(work / "cache")]
        first = measure([sys.executable, "-m", "dslm", "train", *flags, "--max_steps", "2", "--output_dir", str(base)])
        if first.returncode != 0:
            raise RuntimeError(first.output[-3000:])
        walls: dict[float, list[float]] = {p: [] for p in args.points}
        for r in range(args.repeats):
            for point in args.points if r % 2 == 0 else args.points[::-1]:
                out = work / f"at-{point}"
                shutil.rmtree(out, ignore_errors=True)
                shutil.copytree(base, out)
                state_file = out / "checkpoints" / "step-00000002" / "dslm_state.json"
                state = json.loads(state_file.read_text())
                reader = state["stream"]["states"]["0"]
                reader.update(offset=line_start(data, point), taken=0, carry={k: [] for k in reader["carry"]})
                state_file.write_text(json.dumps(state))
                # The checkpoint's manifest checks every file: record the edited state's size and hash.
                manifest_file = state_file.parent / "dslm_manifest.json"
                manifest = json.loads(manifest_file.read_text())
                manifest["files"]["dslm_state.json"] = [state_file.stat().st_size,
                                                        hashlib.sha256(state_file.read_bytes()).hexdigest()]
                manifest_file.write_text(json.dumps(manifest))
                run = measure([sys.executable, "-m", "dslm", "train", *flags, "--max_steps", "3", "--output_dir",
                               str(out)])
                if run.returncode != 0 or "resumed from" not in run.output:
                    raise RuntimeError(run.output[-3000:])
                walls[point].append(run.wall_s)
                print(f"resumed at {point:.0%}: {run.wall_s:.1f} s", flush=True)
        median = {p: statistics.median(w) for p, w in walls.items()}
        rows = [[f"{p:.0%} of {data.stat().st_size / 1e9:.2f} GB", f"{median[p]:.1f} s",
                 " / ".join(f"{w:.1f}" for w in walls[p])] for p in args.points]
        ratio = median[max(args.points)] / median[min(args.points)]
        print(table(["resumed at", "wall, median", "each run"], rows))
        print(f"resumed at {max(args.points):.0%} / at {min(args.points):.0%}: {ratio:.2f}")
        write_json(args.json, {"machine": machine(), "corpus_bytes": data.stat().st_size, "walls": walls,
                               "median": median, "ratio": ratio})
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
