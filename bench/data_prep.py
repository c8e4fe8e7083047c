"""Data preparation throughput: dslm's tokenize + pack against run_mlm.py's pipeline and the tokenizer's ceiling.

    python bench/data_prep.py [--min_mb 50] [--repeats 3] [--json bench/results/data_prep.json]

On the corpus of `bench/corpus.py` (>= 50 MB of pydoc and stdlib docstrings), with tokenizers that
`dslm.tokenizer.train` trains on its distinct documents, three sides tokenize and pack the same texts
into max_seq_length=128 blocks:

- dslm: what `dslm prepare` / `dslm train` run to build the cache once the text is read (`data.units`
  counts the units, `data.slices.write` encodes them and writes the slice's Arrow files; the blocks
  are cut when it is opened, `data.slices.load`), under the environment dslm's CLI sets
  (TOKENIZERS_PARALLELISM=false; the build decides its own parallelism); with 1 worker (the Rust
  tokenizer on every core) and with 2 worker processes (dslm_w2; a worker's CPU time is not in the
  CPU column).
  mlm (BERT WordPiece): input_ids + special_tokens_mask. clm (GPT-2 byte-level BPE): input_ids, an
  EOS after every document.
- run_*lm.py: a faithful copy of the two `datasets.map` calls of transformers'
  examples/pytorch/language-modeling/run_mlm.py (tokenize with return_special_tokens_mask=True, then
  group_texts with `list(chain(*examples[k]))`, batched, default batch_size 1000) and of run_clm.py
  (tokenize, group_texts adding `labels`). Its input is the corpus saved as an Arrow dataset and loaded
  with `load_from_disk`, copied to a fresh directory each repeat, so that the maps write their cache
  files as a first run of run_*lm.py does and nothing is reused. TOKENIZERS_PARALLELISM is unset, as in
  a plain run of the script (the Rust tokenizer then uses every core).
- encode_batch (the ceiling): `tokenizer.backend_tokenizer.encode_batch(texts)` over the same texts
  (in chunks of `--ceiling_batch` texts), with the tokenizers library's parallelism on: the Rust
  tokenizer alone, with no conversion to Python, no packing and no writing.

Throughput is the corpus's token count (as the tokenizer counts them, without dslm's EOS) over the
wall time of each side, so every ratio is a ratio of times; the clock starts after the imports and,
for dslm and encode_batch, after the corpus is read into memory (run_*lm.py memory-maps it inside the
clock, as its load_dataset would). Each measurement runs in a fresh process, as the real programs do.
The sides alternate within each repeat (the order reverses every other repeat); the table gives
medians, and CPU seconds (all threads) beside the wall times show how much of the machine each side
got: on a shared machine the parallel sides lose the most. Token counts are checked: every
side sees the same tokens (dslm's blocks are compared id for id with encode_batch's output), and
each packing's dropped tokens are reported (dslm: the final partial block only; run_*lm.py: the
remainder of every 1000-text batch).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from itertools import chain
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasets import Dataset, DatasetDict
from transformers import PreTrainedTokenizerBase

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python bench/data_prep.py` from a checkout

from bench import corpus  # noqa: E402
from dslm import tokenizer as tok  # noqa: E402
from dslm.data import encode, slices, sources, units  # noqa: E402

CASES = {"mlm": "bert", "clm": "gpt2"}  # objective -> the model family whose tokenizer it uses
BLOCK = 128


def run_lm_pipeline(raw_dir: Path, tokenizer: PreTrainedTokenizerBase, objective: str,
                    max_seq_length: int) -> tuple[Dataset, Dataset]:
    """run_mlm.py (or run_clm.py) with line_by_line off: their tokenize and group_texts maps, copied.
    Returns the grouped blocks and the tokenized texts (whose tokens are counted after the clock stops)."""
    raw_datasets = DatasetDict({"train": datasets.load_from_disk(str(raw_dir))})
    column_names = raw_datasets["train"].column_names
    text_column_name = "text" if "text" in column_names else column_names[0]

    if objective == "mlm":
        def tokenize_function(examples):
            return tokenizer(examples[text_column_name], return_special_tokens_mask=True)
    else:
        def tokenize_function(examples):
            return tokenizer(examples[text_column_name])

    tokenized_datasets = raw_datasets.map(tokenize_function, batched=True, num_proc=None,
                                          remove_columns=column_names, load_from_cache_file=True)

    def group_texts(examples):
        # Concatenate all texts.
        concatenated_examples = {k: list(chain(*examples[k])) for k in examples}
        total_length = len(concatenated_examples[list(examples.keys())[0]])
        if total_length >= max_seq_length:
            total_length = (total_length // max_seq_length) * max_seq_length
        # Split by chunks of max_len.
        result = {
            k: [t[i: i + max_seq_length] for i in range(0, total_length, max_seq_length)]
            for k, t in concatenated_examples.items()
        }
        if objective == "clm":
            result["labels"] = result["input_ids"].copy()
        return result

    grouped = tokenized_datasets.map(group_texts, batched=True, num_proc=None, load_from_cache_file=True)
    return grouped["train"], tokenized_datasets["train"]


def dslm_pipeline(raw: Dataset, tokenizer: PreTrainedTokenizerBase, objective: str, workers: int,
                  out: Path) -> None:
    """What `dslm prepare` runs to build the cache once the text is read, on the same texts: count the
    units, encode them (in `workers` processes) and write the slice."""
    columns = encode.columns_for(objective, whole_word_mask=False)
    counted = {"train": units.count(sources.Raw.of(raw, "text"), False)}
    enc = encode.Encoder(tokenizer, columns, line_by_line=False, max_seq_length=BLOCK)
    slices.write(out, slices.Job(counted, units.plan(counted, 0), enc, True, "bench"), 0, 1, workers)


def dslm_built(out: Path) -> Dataset:
    """The blocks a run reads from that slice."""
    return slices.load([out], "bench", BLOCK)["train"]


def ceiling(backend: Any, texts: list[str], batch: int, eos: int | None = None,
            keep: dict[str, np.ndarray] | None = None) -> tuple[float, float, int]:
    """The Rust tokenizer alone: wall and CPU seconds spent inside `encode_batch`, and the tokens made.

    With `keep`, every text's ids and special-tokens mask are also concatenated into it (with dslm's
    EOS after each document when `eos` is given), off the clock, to check the other sides against.
    """
    wall, cpu, n = 0.0, 0.0, 0
    chunks: dict[str, list[np.ndarray]] = {"input_ids": [], "special_tokens_mask": []}
    gc.collect()
    for i in range(0, len(texts), batch):
        start, start_cpu = time.perf_counter(), time.process_time()
        encodings = backend.encode_batch(texts[i:i + batch])
        wall += time.perf_counter() - start
        cpu += time.process_time() - start_cpu
        n += sum(len(e) for e in encodings)
        if keep is not None:
            tail = [] if eos is None else [eos]
            ids = chain.from_iterable(e.ids + tail for e in encodings)
            masks = chain.from_iterable(e.special_tokens_mask + [1] * len(tail) for e in encodings)
            chunks["input_ids"].append(np.fromiter(ids, np.int64))
            chunks["special_tokens_mask"].append(np.fromiter(masks, np.int64))
        del encodings
    if keep is not None:
        keep.update({name: np.concatenate(parts) for name, parts in chunks.items()})
    return wall, cpu, n


def flat(ds: Dataset, column: str) -> np.ndarray:
    col = ds.data.table.column(column)
    return pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.int64)


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


# Each side runs in a fresh process, as `dslm prepare` and run_*lm.py do: in one long-lived process
# the allocator state that the previous side left behind (gigabytes of Encodings freed by the Rust
# threads) slowed whichever side came next by up to a third.
PARALLELISM = {"dslm": "false",  # what dslm's CLI sets for the whole process; the build decides itself
               "dslm_w2": "false",
               "run_lm": None,  # run_*lm.py sets nothing: the Rust tokenizer's default is parallel
               "encode_batch": "true"}


def worker(side: str, objective: str, work: Path, run_dir: Path, args: argparse.Namespace) -> dict:
    """One measurement of one side, in this (fresh) process."""
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(str(work / f"tokenizer-{objective}"))
    if side == "run_lm":
        shutil.copytree(work / "raw", run_dir)  # a fresh copy: its map caches are written anew
        wall, cpu, (grouped, tokenized) = timed(lambda: run_lm_pipeline(run_dir, tokenizer, objective, BLOCK))
        seen = int(pc.sum(pc.list_value_length(tokenized.data.table.column("input_ids"))).as_py())
        return {"wall": wall, "cpu": cpu, "tokens": seen, "rows": len(grouped), "columns": grouped.column_names}
    table = corpus.load(args.min_mb)
    if side in ("dslm", "dslm_w2"):
        raw = Dataset(datasets.table.InMemoryTable(table))
        workers = 2 if side == "dslm_w2" else 1
        wall, cpu, _ = timed(lambda: dslm_pipeline(raw, tokenizer, objective, workers, run_dir))
        built = dslm_built(run_dir)
        return {"wall": wall, "cpu": cpu, "rows": len(built), "columns": built.column_names}
    texts = table.column("text").to_pylist()
    ref: dict[str, np.ndarray] | None = {} if args.keep_reference else None
    eos = tokenizer.eos_token_id if objective == "clm" else None
    wall, cpu, n = ceiling(tokenizer.backend_tokenizer, texts, args.ceiling_batch, eos, ref)
    for name, values in (ref or {}).items():
        np.save(work / f"reference-{objective}-{name}.npy", values)
    return {"wall": wall, "cpu": cpu, "tokens": n}


def measure(side: str, objective: str, work: Path, run_dir: Path, args: argparse.Namespace,
            keep_reference: bool) -> dict:
    env = dict(os.environ)
    env.pop("TOKENIZERS_PARALLELISM", None)
    if PARALLELISM[side] is not None:
        env["TOKENIZERS_PARALLELISM"] = PARALLELISM[side]
    command = [sys.executable, __file__, "--worker", side, "--objective", objective, "--work", str(work),
               "--run_dir", str(run_dir), "--min_mb", str(args.min_mb), "--ceiling_batch", str(args.ceiling_batch)]
    done = subprocess.run(command + (["--keep_reference"] if keep_reference else []), env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{side} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_case(objective: str, work: Path, args: argparse.Namespace) -> dict:
    family = CASES[objective]
    texts = pq.read_table(corpus.build(args.min_mb)).column("text").to_pylist()
    distinct = list(dict.fromkeys(texts))  # the corpus repeats its base documents: train on one copy
    tokenizer = tok.train(family, (distinct[i:i + 1000] for i in range(0, len(distinct), 1000)), args.vocab_size)
    tokenizer.save_pretrained(str(work / f"tokenizer-{objective}"))
    backend = tokenizer.backend_tokenizer

    sides = ("encode_batch", "dslm", "dslm_w2", "run_lm")  # encode_batch first: it saves the reference tokens
    times: dict[str, list[float]] = {s: [] for s in sides}
    cpus: dict[str, list[float]] = {s: [] for s in sides}
    counts: dict[str, dict] = {}
    n_tokens = 0
    for r in range(args.repeats):
        for side in sides if r % 2 == 0 else sides[::-1]:
            run_dir = work / f"{objective}-{side}-{r}"
            got = measure(side, objective, work, run_dir, args, keep_reference=r == 0)
            if side == "encode_batch":
                n_tokens = n_tokens or got["tokens"]
                assert got["tokens"] == n_tokens
                counts[side] = {"tokens_in": got["tokens"]}
            elif side in ("dslm", "dslm_w2"):
                ids = np.load(work / f"reference-{objective}-input_ids.npy")
                kept = got["rows"] * BLOCK
                if r == 0:  # the cache holds encode_batch's tokens, in order, in whole blocks
                    built = dslm_built(run_dir)
                    for column in built.column_names:
                        ref = np.load(work / f"reference-{objective}-{column}.npy")
                        values = flat(built, column)
                        assert np.array_equal(values, ref[:len(values)]), f"dslm's {column} differ from encode_batch's"
                    del built
                assert len(ids) - kept < BLOCK, "dslm dropped more than the final partial block"
                counts[side] = {"tokens_in": len(ids), "kept": kept, "dropped": len(ids) - kept,
                                "columns": got["columns"]}
            else:
                assert got["tokens"] == n_tokens, f"run_lm tokenized {got['tokens']} tokens, encode_batch {n_tokens}"
                kept = got["rows"] * BLOCK
                counts[side] = {"tokens_in": got["tokens"], "kept": kept, "dropped": got["tokens"] - kept,
                                "columns": got["columns"]}
            shutil.rmtree(run_dir, ignore_errors=True)
            times[side].append(got["wall"])
            cpus[side].append(got["cpu"])
            print(f"  {objective} repeat {r + 1}/{args.repeats} {side:13s} {got['wall']:7.2f} s "
                  f"({n_tokens / got['wall'] / 1e6:.3f} M tokens/s, cpu/wall {got['cpu'] / got['wall']:.2f})",
                  flush=True)
    median = {s: statistics.median(times[s]) for s in sides}
    return {"objective": objective, "tokenizer": f"{family} ({type(backend.model).__name__}, "
                                                  f"vocab {tokenizer.vocab_size})",
            "corpus_tokens": n_tokens, "documents": len(texts), "seconds": times, "cpu_seconds": cpus,
            "median_seconds": median, "tokens_per_s": {s: n_tokens / median[s] for s in sides},
            "dslm_vs_run_lm": median["run_lm"] / median["dslm"],
            "dslm_w2_vs_run_lm": median["run_lm"] / median["dslm_w2"],
            "dslm_vs_encode_batch": median["encode_batch"] / median["dslm"], "counts": counts}


def machine() -> dict:
    import tokenizers
    import transformers

    cpu = platform.processor()
    with contextlib.suppress(OSError, StopIteration):  # not Linux: keep platform's answer
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    return {"date": datetime.date.today().isoformat(), "cpu": cpu, "cores": os.cpu_count(),
            "python": platform.python_version(), "tokenizers": tokenizers.__version__,
            "transformers": transformers.__version__, "datasets": datasets.__version__,
            "pyarrow": pa.__version__, "numpy": np.__version__, "load_average_start": os.getloadavg()}


def table_markdown(results: list[dict], repeats: int) -> str:
    lines = ["| case | tokenizer | dslm tok/s (1 worker) | dslm tok/s (2 workers) | run_*lm.py tok/s | "
             "encode_batch tok/s (ceiling) | dslm / run_*lm.py (target >= 2x) | dslm / ceiling (target >= 0.70) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for res in results:
        t = res["tokens_per_s"]
        lines.append(f"| {res['objective']} | {res['tokenizer']} | {t['dslm'] / 1e6:.3f} M "
                     f"| {t['dslm_w2'] / 1e6:.3f} M | {t['run_lm'] / 1e6:.3f} M "
                     f"| {t['encode_batch'] / 1e6:.3f} M | {res['dslm_vs_run_lm']:.2f}x | "
                     f"{res['dslm_vs_encode_batch']:.2f} |")
    lines += ["", f"Medians of {repeats} repeats. Per repeat (wall seconds, CPU seconds of all threads in brackets, "
              "and the two ratios of that repeat, whose sides ran back to back):", "",
              "| case | repeat | dslm | dslm, 2 workers | run_*lm.py | encode_batch | dslm / run_*lm.py | "
              "dslm / ceiling |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for res in results:
        sec, cpu = res["seconds"], res["cpu_seconds"]
        for r in range(len(sec["dslm"])):
            cells = " | ".join(f"{sec[s][r]:.1f} ({cpu[s][r]:.1f})" for s in ("dslm", "dslm_w2", "run_lm",
                                                                                  "encode_batch"))
            lines.append(f"| {res['objective']} | {r + 1} | {cells} | {sec['run_lm'][r] / sec['dslm'][r]:.2f}x | "
                         f"{sec['encode_batch'][r] / sec['dslm'][r]:.2f} |")
    lines += ["", "| case | corpus tokens | dslm kept / dropped | run_*lm.py kept / dropped |", "|---|---:|---:|---:|"]
    for res in results:
        c = res["counts"]
        lines.append(f"| {res['objective']} | {res['corpus_tokens']:,} | "
                     f"{c['dslm']['kept']:,} / {c['dslm']['dropped']:,} "
                     f"(+{c['dslm']['tokens_in'] - res['corpus_tokens']:,} EOS in) | "
                     f"{c['run_lm']['kept']:,} / {c['run_lm']['dropped']:,} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--min_mb", type=int, default=50, help="corpus size (bench/corpus.py)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", default="mlm,clm", help="comma-separated: mlm (BERT), clm (GPT-2)")
    parser.add_argument("--vocab_size", type=int, default=30522, help="of the tokenizers trained by dslm")
    parser.add_argument("--ceiling_batch", type=int, default=10_000, help="texts per encode_batch call")
    parser.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / "data_prep.json"),
                        help="where the figures are written")
    # One side's measurement in a child process (internal).
    parser.add_argument("--worker", choices=tuple(PARALLELISM), help=argparse.SUPPRESS)
    parser.add_argument("--objective", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--run_dir", help=argparse.SUPPRESS)
    parser.add_argument("--keep_reference", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.objective, Path(args.work), Path(args.run_dir), args)))
        return

    started = time.perf_counter()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    info = machine()
    table = corpus.load(args.min_mb)
    info["corpus"] = {"path": str(corpus.build(args.min_mb)), "documents": table.num_rows,
                      "mb": pc.sum(pc.binary_length(table.column("text"))).as_py() / 1e6}
    print(f"corpus: {info['corpus']['documents']} documents, {info['corpus']['mb']:.1f} MB; "
          f"{info['cores']} cores; {args.repeats} repeats", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="dslm-bench-data-") as tmp:
        Dataset(datasets.table.InMemoryTable(table)).save_to_disk(str(Path(tmp) / "raw"))
        del table
        for objective in args.cases.split(","):
            results.append(run_case(objective, Path(tmp), args))
    info["load_average_end"] = os.getloadavg()
    info["bench_minutes"] = (time.perf_counter() - started) / 60
    markdown = table_markdown(results, args.repeats)
    print()
    print(markdown)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"machine": info, "repeats": args.repeats, "block": BLOCK,
                                           "results": results, "markdown": markdown}, indent=1))
    print(f"\nwritten: {args.json} ({info['bench_minutes']:.1f} minutes)")


if __name__ == "__main__":
    main()
