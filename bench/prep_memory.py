"""Memory of `dslm prepare` as the corpus grows: peak RSS of its largest process on a small and a large corpus.

    python bench/prep_memory.py [--sizes_gb 0.5 5] [--workers 2] [--baseline REV] [--json FILE]

The corpora are plain text files built from `bench/corpus.py`'s base documents (pydoc topics and the
standard library's docstrings, ~2.7 MB, text every Python install carries), repeated whole until the
file holds the size asked for; a line is a row, as `--train_file corpus.txt` reads it. Each size runs
`dslm prepare --model_type gpt2 --max_seq_length 512 --preprocessing_num_workers W` in a fresh process
tree with a fresh output and cache directory (the tokenizer is trained each time, on its bounded
sample). The peak is ru_maxrss of the largest process reaped below the benchmark: the main process or
one worker. `--baseline REV` also runs the smallest size with the code of git revision REV (from a
temporary worktree), side by side.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import corpus  # noqa: E402
from bench.common import ROOT, machine, measure, table, write_json  # noqa: E402


def text_corpus(size_gb: float, directory: Path) -> Path:
    path = directory / f"corpus-{size_gb:g}gb.txt"
    if path.exists():
        return path
    base = "\n".join(doc.strip() for doc in corpus.base_documents()).encode() + b"\n"
    target = int(size_gb * 1e9)
    with open(path.with_suffix(".tmp"), "wb") as f:
        for _ in range(-(-target // len(base))):
            f.write(base)
    path.with_suffix(".tmp").rename(path)
    return path


def run(code: Path, data: Path, workers: int, work: Path) -> dict[str, object]:
    out = work / "out"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    cmd = [sys.executable, "-m", "dslm", "prepare", "--model_type", "gpt2", "--train_file", str(data),
           "--max_seq_length", "512", "--preprocessing_num_workers", str(workers), "--output_dir", str(out),
           "--cache_dir", str(out / "cache")]
    measured = measure(cmd, env={"PYTHONPATH": str(code)}, cwd=code, timeout=7200)
    if measured.returncode != 0:
        raise RuntimeError(f"dslm prepare failed: {measured.output[-3000:]}")
    metas = list((out / "cache").glob("tokenized-*/slice-*/dslm_cache.json"))
    tokens = sum(json.loads(m.read_text())["tokens"].get("train", 0) for m in metas) if metas else None
    return {"corpus_gb": data.stat().st_size / 1e9, "peak_rss_mb": measured.peak_rss_mb, "wall_s": measured.wall_s,
            "train_tokens": tokens, "summary": measured.output.strip().splitlines()[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes_gb", type=float, nargs="+", default=[0.5, 5.0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--baseline", help="a git revision to run on the smallest corpus too")
    parser.add_argument("--data_dir", default=str(Path(tempfile.gettempdir()) / "dslm-bench-prep"))
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "prep_memory.json"))
    args = parser.parse_args()
    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    rows, results = [], []
    sides = [("dslm", ROOT, size) for size in args.sizes_gb]
    baseline = None
    if args.baseline:
        baseline = data_dir / "baseline"
        subprocess.run(["git", "worktree", "remove", "--force", str(baseline)], cwd=ROOT, capture_output=True)
        subprocess.run(["git", "worktree", "add", "--detach", str(baseline), args.baseline], cwd=ROOT, check=True,
                       capture_output=True)
        sides.insert(0, (f"dslm@{args.baseline}", baseline, min(args.sizes_gb)))
    try:
        for name, code, size in sides:
            result = {"side": name, "workers": args.workers, **run(code, text_corpus(size, data_dir), args.workers,
                                                                   data_dir)}
            results.append(result)
            print(json.dumps(result), flush=True)
            rows.append([name, f"{result['corpus_gb']:.2f} GB", f"{result['peak_rss_mb']:,.0f} MB",
                         f"{result['wall_s']:.0f} s", f"{result['train_tokens'] or 0:,}"])
    finally:
        if baseline is not None:
            subprocess.run(["git", "worktree", "remove", "--force", str(baseline)], cwd=ROOT, capture_output=True)
    mine = [r for r in results if r["side"] == "dslm"]
    if len(mine) >= 2:
        print(f"largest / smallest corpus peak RSS: {mine[-1]['peak_rss_mb'] / mine[0]['peak_rss_mb']:.2f}")
    print(table(["code", "corpus", "peak RSS (largest process)", "wall", "train tokens"], rows))
    write_json(args.json, {"machine": machine(), "results": results})


if __name__ == "__main__":
    main()
