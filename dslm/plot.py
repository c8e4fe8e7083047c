"""`dslm plot`: compare runs from their metrics.jsonl without W&B."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dslm.errors import ConfigError
from dslm.run_files import read_metrics

PANELS = [("train/loss", "train loss"), ("eval/loss", "eval loss"), ("eval/perplexity", "eval perplexity"),
          ("perf/tokens_per_second", "tokens/s")]


def read(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise ConfigError(f"{run_dir} has no metrics.jsonl: give the --output_dir of a dslm run")
    return read_metrics(path)


def tokens_at_steps(rows: list[dict[str, Any]]) -> dict[int, float]:
    """tokens seen at each logged step, interpolated for eval-only rows from the train rows."""
    known = {r["step"]: r["train/tokens_seen"] for r in rows if r.get("train/tokens_seen") is not None}
    per_step = max(known.items())[1] / max(known) if known else 0.0
    return {r["step"]: known.get(r["step"], r["step"] * per_step) for r in rows}


def figure(run_dirs: list[Path]):
    """Rows: against steps, against tokens seen; columns: the panels; one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(PANELS), figsize=(5 * len(PANELS), 8), squeeze=False)
    for run_dir in run_dirs:
        rows = read(run_dir)
        tokens = tokens_at_steps(rows)
        for col, (key, title) in enumerate(PANELS):
            points = sorted((r["step"], r[key]) for r in rows if r.get(key) is not None)
            steps = [s for s, _ in points]
            values = [v for _, v in points]
            axes[0][col].plot(steps, values, marker="." if len(points) < 30 else None, label=run_dir.name)
            axes[1][col].plot([tokens[s] for s in steps], values, label=run_dir.name)
            axes[0][col].set_title(title)
            axes[0][col].set_xlabel("step")
            axes[1][col].set_xlabel("tokens seen")
            if key == "eval/perplexity":
                for row in axes:
                    row[col].set_yscale("log")
    for row in axes:
        for ax in row:
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def run(run_dirs: list[str], out: str) -> None:
    if not run_dirs:
        raise ConfigError("give at least one run directory: dslm plot RUN_DIR [RUN_DIR ...] --out curves.png")
    fig = figure([Path(d) for d in run_dirs])
    fig.savefig(out, dpi=100)
    print(f"wrote {out}: {len(run_dirs)} run(s)")
