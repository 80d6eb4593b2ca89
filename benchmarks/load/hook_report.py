"""The rows of the ``hooks`` section (:mod:`benchmarks.load.hook_costs`): each hook's
figure against its target, and the comparators of the same run beside it."""

from __future__ import annotations

from typing import Any

from benchmarks.load.report import Row, _check, _get

SECTION = "hooks"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def rows(hooks: dict[str, Any]) -> list[Row]:
    if not hooks:
        return []
    llm50 = _get(hooks, "fleettrace", "llm", "p50_us")
    llm99 = _get(hooks, "fleettrace", "llm", "p99_us")
    tool50 = _get(hooks, "fleettrace", "tool", "p50_us")
    actor50 = _get(hooks, "fleettrace", "actor", "p50_us")
    otel50 = _get(hooks, "otel_span", "p50_us")
    traceable50 = _get(hooks, "traceable", "p50_us")
    observe = hooks.get("observe") or {}
    observe50 = observe.get("p50_us")
    comparators = (
        f"same run: OTel span p50 {_fmt(otel50)}, @traceable p50 {_fmt(traceable50)}, "
        f"@observe p50 {_fmt(observe50) if observe50 is not None else observe.get('unavailable')}"
    )
    result = [
        Row(
            SECTION,
            "llm hook p50",
            "µs",
            llm50,
            None,
            "lower",
            "<= 3",
            _check(llm50, lambda v: v <= 3),
            comparators,
        ),
        Row(
            SECTION,
            "llm hook p99",
            "µs",
            llm99,
            None,
            "lower",
            "<= 20",
            _check(llm99, lambda v: v <= 20),
            f"same run: OTel span p99 {_fmt(_get(hooks, 'otel_span', 'p99_us'))}",
        ),
        Row(
            SECTION,
            "tool hook p50",
            "µs",
            tool50,
            None,
            "lower",
            "<= 2",
            _check(tool50, lambda v: v <= 2),
        ),
        Row(
            SECTION,
            "actor hook p50",
            "µs",
            actor50,
            None,
            "lower",
            "<= 2",
            _check(actor50, lambda v: v <= 2),
            "made, entered and exited; the work inside not",
        ),
        Row(SECTION, "OTel span p50 (same attributes, comparator)", "µs", otel50, None, "lower"),
        Row(SECTION, "@traceable no-op p50 (comparator)", "µs", traceable50, None, "lower"),
    ]
    if llm50 is not None and otel50:
        result.append(
            Row(
                SECTION,
                "llm hook p50 x 8 vs OTel span p50",
                "µs",
                round(llm50 * 8, 2),
                None,
                "lower",
                f"<= {otel50}",
                llm50 * 8 <= otel50,
            )
        )
    if llm50 is not None and traceable50:
        result.append(
            Row(
                SECTION,
                "llm hook p50 x 50 vs @traceable p50",
                "µs",
                round(llm50 * 50, 2),
                None,
                "lower",
                f"<= {traceable50}",
                llm50 * 50 <= traceable50,
            )
        )
    if observe50 is not None:
        result.append(
            Row(SECTION, "@observe no-op p50 (comparator)", "µs", observe50, None, "lower")
        )
        if llm50 is not None:
            result.append(
                Row(
                    SECTION,
                    "llm hook p50 x 50 vs @observe p50",
                    "µs",
                    round(llm50 * 50, 2),
                    None,
                    "lower",
                    f"<= {observe50}",
                    llm50 * 50 <= observe50,
                )
            )
    elif observe:
        result.append(
            Row(
                SECTION,
                "@observe no-op p50 (comparator)",
                "µs",
                None,
                None,
                "lower",
                note=observe.get("unavailable"),
            )
        )
    memory = hooks.get("memory")
    if memory:
        per_100k = memory["mb_per_100k"]
        result.append(
            Row(
                SECTION,
                "emitter memory per 100k hook records",
                "MB",
                per_100k,
                None,
                "lower",
                "<= 40",
                _check(per_100k, lambda v: v <= 40),
                f"{memory['buffered']:,} records buffered ({memory['calls']:,} LLM calls, "
                f"their plans' and actors' records), {memory['bytes_per_record']} bytes each",
            )
        )
    return result
