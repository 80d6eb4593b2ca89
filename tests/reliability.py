"""Figures of the fault tests: printed (``pytest -s``) and written to
``build/reliability/<name>.json`` so docs/reliability.md can quote what was measured."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

FIGURES_DIR = Path(__file__).resolve().parent.parent / "build" / "reliability"


def report(name: str, figures: dict[str, object]) -> None:
    FIGURES_DIR.mkdir(parents=True, exist_ok=True)
    (FIGURES_DIR / f"{name}.json").write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    print(f"\nreliability figures {name}: {json.dumps(figures, sort_keys=True)}")


def wait_until(condition: Callable[[], bool], *, timeout_s: float, what: str) -> float:
    """Poll ``condition`` until true; the time it took. Fails the test at the deadline."""
    started = time.monotonic()
    deadline = started + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout_s} s")
        time.sleep(0.1)
    return time.monotonic() - started
