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

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Progress:
        """The fields of a checkpoint's state (which holds more than progress); absent ones start at 0."""
        return cls(**{f.name: int(state.get(f.name, 0)) for f in dataclasses.fields(cls)})
