"""Names shared by what writes a run's output directory and what reads it back (`dslm runs`, `dslm plot`):
kept free of heavy imports, so reading a run costs no torch."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

RUN_FACTS = "run.json"  # what the run is (objective, model, size, ranks, ZeRO stage, steps), written at its start


def set_names(figures: dict[str, Any]) -> list[str]:
    """The named validation sets in a dict of eval figures, in order."""
    return [key[len("eval/"):-len("/perplexity")] for key in figures
            if key.startswith("eval/") and key.endswith("/perplexity") and key.count("/") == 2]


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's rows, [] where there is none yet; a line torn by a kill (or still being written by a run
    in progress) is skipped."""
    rows = []
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                rows.append(json.loads(line))
    return [row for row in rows if isinstance(row, dict)]
