"""Figures of the fault tests: printed (``pytest -s``) and written to
``build/reliability/<name>.json`` so docs/reliability.md can quote what was measured."""

from __future__ import annotations

import json
from pathlib import Path

FIGURES_DIR = Path(__file__).resolve().parent.parent / "build" / "reliability"


def report(name: str, figures: dict[str, object]) -> None:
    FIGURES_DIR.mkdir(parents=True, exist_ok=True)
    (FIGURES_DIR / f"{name}.json").write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    print(f"\nreliability figures {name}: {json.dumps(figures, sort_keys=True)}")
