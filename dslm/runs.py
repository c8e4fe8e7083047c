"""`dslm runs`: one row per run, read from the files a run writes into its output directory, so runs can be
compared (finished or still training) without W&B."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dslm.errors import ConfigError
from dslm.run_files import RUN_FACTS, read_metrics, set_names

FORMATS = ("markdown", "csv", "json")
# Settings that differ between any two runs and say nothing about how they trained.
NOT_SETTINGS = {"output_dir", "cache_dir"}
# Settings already shown by a column of their own (the objective column is the one the run settled on).
SHOWN = {"objective"}


@dataclass
class Run:
    """What one output directory holds; a file a run has not written (yet) is empty."""

    path: str  # as given on the command line: the row's name
    config: dict[str, Any] = field(default_factory=dict)  # run_config.json, flattened: flag name -> value
    facts: dict[str, Any] = field(default_factory=dict)  # run.json
    rows: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl
    results: dict[str, Any] = field(default_factory=dict)  # results.json: only a finished run has it

    @property
    def done(self) -> bool:
        return bool(self.results)


def _read_json(path: Path) -> dict[str, Any]:
    """A file's object, or {} when it is missing or unreadable (written by an older dslm, or by hand)."""
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            return data
    return {}


def load(run_dir: str) -> Run:
    path = Path(run_dir)
    if not path.is_dir():
        raise ConfigError(f"{run_dir} does not exist or is not a directory: give the --output_dir of a dslm train "
                          f"run")
    if not (path / "run_config.json").is_file() and not (path / "metrics.jsonl").is_file():
        raise ConfigError(f"{run_dir} is not a dslm run (no run_config.json or metrics.jsonl): give the "
                          f"--output_dir of a dslm train run")
    sections = _read_json(path / "run_config.json")
    config = {name: value for section in sections.values() if isinstance(section, dict)
              for name, value in section.items()}
    return Run(run_dir, config, _read_json(path / RUN_FACTS), read_metrics(path / "metrics.jsonl"),
               _read_json(path / "results.json"))


def latest(run: Run, key: str) -> Any:
    """The last logged value of `key`, or None."""
    return next((row[key] for row in reversed(run.rows) if row.get(key) is not None), None)


def latest_train_step(run: Run) -> int | None:
    return next((row.get("step") for row in reversed(run.rows) if row.get("train/loss") is not None), None)


def eval_figures(run: Run) -> dict[str, Any]:
    """The final eval figures of a finished run; of one in progress, the latest logged during training. Not
    the evaluation before training (step 0): beside other runs' final figures it would read as this run's."""
    if run.done:
        return run.results.get("eval") or {}
    figures: dict[str, Any] = {}
    for row in run.rows:
        if row.get("step"):
            figures.update({k: v for k, v in row.items() if k.startswith("eval/") and v is not None})
    return figures


def wall_time(run: Run) -> float | None:
    """Seconds from the run's first start (start-ups, evaluations and any downtime between a stop and its
    resume included): to its end when finished, else to its last logged row."""
    if run.done and (run.results.get("train") or {}).get("wall_s") is not None:
        return run.results["train"]["wall_s"]
    last, started = latest(run, "time"), run.facts.get("started")
    return last - started if last is not None and started is not None else None


def model_name(info: dict[str, Any], config: dict[str, Any]) -> str | None:
    name = info.get("model_type") or config.get("model_type") or config.get("model_name_or_path")
    if name is None or info.get("parameters") is None:
        return name
    return f"{name} {count(info['parameters'])}"


def count(n: float) -> str:
    """1234567 -> 1.23M: parameters and tokens at a glance."""
    for size, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:g}"


def eval_columns(runs: list[Run]) -> list[tuple[str, str]]:
    """(column, metrics key) pairs: the plain eval figures, and a pair per named validation set. The plain pair
    is left out when every evaluated run has named sets: it is then the first set's figure again."""
    evaluated = [eval_figures(r) for r in runs]
    evaluated = [figures for figures in evaluated if figures]
    names = list(dict.fromkeys(name for figures in evaluated for name in set_names(figures)))
    columns = []
    if not evaluated or any(not set_names(figures) for figures in evaluated):
        columns += [("eval loss", "eval/loss"), ("eval perplexity", "eval/perplexity")]
    for name in names:
        columns += [(f"eval loss ({name})", f"eval/{name}/loss"), (f"eval perplexity ({name})",
                                                                   f"eval/{name}/perplexity")]
    return columns


def differing(runs: list[Run]) -> list[str]:
    """Flags whose value is not the same in every run; a run without the flag (no run_config.json, or one
    written before the flag existed) is left out of the comparison."""
    names = dict.fromkeys(name for run in runs for name in run.config)
    return [name for name in names if name not in NOT_SETTINGS | SHOWN
            and len({json.dumps(run.config[name]) for run in runs if name in run.config}) > 1]


def row(run: Run, evals: list[tuple[str, str]], mfu: bool, settings: list[str]) -> dict[str, Any]:
    """One run's cells, raw values (None: not known)."""
    info = {**run.facts, **{k: v for k, v in run.results.items() if not isinstance(v, dict)}}
    train = run.results.get("train") or {}
    # In progress: the step of the last train figures, so steps, tokens and loss are of one moment (a stop's
    # checkpoint row may come later: the status shows it).
    step = train.get("steps") if run.done else latest_train_step(run)
    figures = eval_figures(run)
    cells = {
        "run": run.path,
        "status": "done" if run.done else f"{latest(run, 'step') or 0}/{info.get('total_steps') or '?'}",
        "objective": info.get("objective") or run.config.get("objective"),
        "model": model_name(info, run.config),
        "ZeRO stage": info.get("zero_stage"),
        "world size": info.get("world_size"),
        "steps": step,
        "tokens": train.get("tokens") if run.done else latest(run, "train/tokens_seen"),
        "train loss": train.get("loss") if run.done else latest(run, "train/loss"),
        **{column: figures.get(key) for column, key in evals},
        "tokens/s": train.get("tokens_per_second") if run.done else latest(run, "perf/tokens_per_second"),
    }
    if mfu:
        cells["MFU"] = latest(run, "perf/mfu")
    cells["wall time"] = wall_time(run)
    return {**cells, **{name: run.config.get(name) for name in settings}}


def table(runs: list[Run]) -> list[dict[str, Any]]:
    evals = eval_columns(runs)
    mfu = any(latest(run, "perf/mfu") is not None for run in runs)
    settings = differing(runs) if len(runs) > 1 else []
    return [row(run, evals, mfu, settings) for run in runs]


def duration(seconds: float) -> str:
    """16s, 3m05s, 2h07m."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def cell(column: str, value: Any) -> str:
    """A value as the markdown table shows it."""
    if value is None:
        return "-"
    if column == "tokens":
        return count(value)
    if column == "wall time":
        return duration(value)
    if column == "MFU":
        return f"{value:.1%}"
    if column == "tokens/s":
        return f"{value:.0f}"
    if column == "train loss" or column.startswith("eval loss"):
        return f"{value:.4f}"
    if column.startswith("eval perplexity"):
        return f"{value:.2f}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).replace("|", "\\|")


def markdown(rows: list[dict[str, Any]]) -> str:
    """A table padded to line up in a terminal; numeric columns aligned right."""
    columns = list(rows[0])
    text = [[cell(c, r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in text)) for i, c in enumerate(columns)]
    numeric = [all(isinstance(r[c], int | float) and not isinstance(r[c], bool) for r in rows if r[c] is not None)
               and c != "status" for c in columns]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(t.rjust(w) if right else t.ljust(w)
                                 for t, w, right in zip(cells, widths, numeric, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" if right else "-" * (w + 2)
                          for w, right in zip(widths, numeric, strict=True)) + "|"
    return "\n".join([line(columns), rule, *(line(t) for t in text)])


def csv_text(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: "" if v is None else v for k, v in r.items()} for r in rows])
    return out.getvalue().rstrip("\n")


def render(rows: list[dict[str, Any]], format: str) -> str:
    if format == "json":
        return json.dumps(rows, indent=2)
    return csv_text(rows) if format == "csv" else markdown(rows)


def run(run_dirs: list[str], format: str = "markdown") -> None:
    if not run_dirs:
        raise ConfigError("give at least one run directory: dslm runs RUN_DIR [RUN_DIR ...] [--format csv|json]")
    format = str(format)
    if format not in FORMATS:
        raise ConfigError(f"unknown --format {format}: give csv|json|markdown")
    runs = [load(str(d)) for d in run_dirs]
    print(render(table(runs), format))
