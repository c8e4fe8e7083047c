"""Where training is: the one record a checkpoint saves and a resumed run restores whole."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass
class Progress:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    samples: int = 0  # consumed by all ranks together, since the start of the run
    samples_in_epoch: int = 0  # the position in this epoch's permutation (or stream pass)
    tokens_seen: int = 0  # real tokens on all ranks, padding excluded
    skipped_steps: int = 0  # updates dropped for inf/NaN
    tokens_by_source: dict[str, int] = dataclasses.field(default_factory=dict)  # a mixture's sources

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Progress:
        """The fields of a checkpoint's state (which holds more than progress); absent ones start at 0."""
        counts = {f.name: int(state.get(f.name, 0)) for f in dataclasses.fields(cls) if f.name != "tokens_by_source"}
        by_source = {str(k): int(v) for k, v in (state.get("tokens_by_source") or {}).items()}
        return cls(**counts, tokens_by_source=by_source)
