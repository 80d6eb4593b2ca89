"""One figure of the harness's table: the row type and the helpers that fill it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

Better = Literal["higher", "lower"]


@dataclass(frozen=True)
class Row:
    section: str
    figure: str
    unit: str
    fleettrace: float | None
    baseline: float | None
    better: Better
    target: str | None = None
    met: bool | None = None
    note: str | None = None

    @property
    def gain(self) -> float | None:
        ours, theirs = self.fleettrace, self.baseline
        if ours is None or theirs is None or ours == 0 or theirs == 0:
            return None
        return theirs / ours if self.better == "lower" else ours / theirs

    @property
    def status(self) -> str:
        if self.met is None:
            return "" if self.target is None else "n/a"
        return "PASS" if self.met else "MISS"

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["gain_vs_baseline"] = None if self.gain is None else round(self.gain, 2)
        data["ratio_vs_baseline"] = (
            None
            if self.fleettrace is None or not self.baseline
            else float(f"{self.fleettrace / self.baseline:.6g}")
        )
        data["status"] = self.status
        return data


def get(data: dict[str, Any], *path: str) -> Any:
    for part in path:
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def check(value: float | None, test: Callable[[float], bool]) -> bool | None:
    return None if value is None else bool(test(value))
