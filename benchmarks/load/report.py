"""The run's figures against the issue's targets and against the baseline: one row
per figure, as a table for people and as JSON for scripts.

``gain`` is how many times better fleettrace is than the baseline on that figure
(throughput: fleettrace / baseline; latency, time and memory: baseline / fleettrace),
so above 1 is better whatever the unit.
"""

from __future__ import annotations

import math
from typing import Any

from benchmarks.load.row import Better, Row, check, get
from benchmarks.load.shards import shard_rows
from benchmarks.load.target_rows import (
    DRAIN_S_TARGET,
    FRESHNESS_P99_MS_TARGET,
    FRESHNESS_TARGET_RATE,
    PRODUCER_RECORDS_PER_S_TARGET,
    WORKER_RSS_MB_TARGET,
    import_rows,
    worker_rows,
)

__all__ = ["Better", "Row", "build", "markdown", "render"]

_get = get
_check = check


def build(sections: dict[str, Any]) -> list[Row]:
    rows: list[Row] = _live_read_rows(sections.get("live_reads", {}))
    rows += import_rows(sections.get("imports", {}))
    rows += shard_rows(sections.get("shards", {}))
    hot = sections.get("hotpath", {})
    if hot:
        traceable_p50 = _get(hot, "traceable", "p50_us")
        otel_p50 = _get(hot, "otel_span", "p50_us")
        traceable_p99 = _get(hot, "traceable", "p99_us")
        otel_p99 = _get(hot, "otel_span", "p99_us")
        p50 = _get(hot, "record", "p50_us")
        p99 = _get(hot, "record", "p99_us")
        rows += [
            Row(
                "hot path",
                "record() p50",
                "µs",
                p50,
                _get(hot, "baseline_record", "p50_us"),
                "lower",
                "<= 10",
                _check(p50, lambda v: v <= 10),
            ),
            Row(
                "hot path",
                "record() p99",
                "µs",
                p99,
                _get(hot, "baseline_record", "p99_us"),
                "lower",
                "<= 50",
                _check(p99, lambda v: v <= 50),
            ),
            Row(
                "hot path",
                "record() mean",
                "µs",
                _get(hot, "record", "mean_us"),
                _get(hot, "baseline_record", "mean_us"),
                "lower",
            ),
            Row(
                "hot path",
                "LLMTrace(...) + record() p50",
                "µs",
                _get(hot, "build_and_record", "p50_us"),
                None,
                "lower",
            ),
            Row(
                "hot path",
                "@traceable no-op p50 / p99",
                "µs",
                traceable_p50,
                None,
                "lower",
                note=f"p99 {traceable_p99}",
            ),
            Row(
                "hot path",
                "OpenTelemetry span p50 / p99",
                "µs",
                otel_p50,
                None,
                "lower",
                note=f"p99 {otel_p99}",
            ),
            Row(
                "hot path",
                "dict copy + deque.append p50 (floor)",
                "µs",
                _get(hot, "dict_deque", "p50_us"),
                None,
                "lower",
            ),
        ]
        if p50 is not None and traceable_p50:
            rows.append(
                Row(
                    "hot path",
                    "record() p50 x 20 vs @traceable p50",
                    "µs",
                    round(p50 * 20, 2),
                    None,
                    "lower",
                    f"<= {traceable_p50}",
                    p50 * 20 <= traceable_p50,
                )
            )
        if p99 is not None and traceable_p99:
            rows.append(
                Row(
                    "hot path",
                    "record() p99 x 20 vs @traceable p99",
                    "µs",
                    round(p99 * 20, 2),
                    None,
                    "lower",
                    f"<= {traceable_p99}",
                    p99 * 20 <= traceable_p99,
                )
            )
        if p50 is not None and otel_p50:
            rows.append(
                Row(
                    "hot path",
                    "record() p50 x 4 vs OTel span p50",
                    "µs",
                    round(p50 * 4, 2),
                    None,
                    "lower",
                    f"<= {otel_p50}",
                    p50 * 4 <= otel_p50,
                )
            )
        if p99 is not None and otel_p99:
            rows.append(
                Row(
                    "hot path",
                    "record() p99 x 4 vs OTel span p99",
                    "µs",
                    round(p99 * 4, 2),
                    None,
                    "lower",
                    f"<= {otel_p99}",
                    p99 * 4 <= otel_p99,
                )
            )
    producer = sections.get("producer", {})
    if producer:
        ours = _get(producer, "fleettrace", "records_per_s")
        rows.append(
            Row(
                "producer",
                "records/s, one process, with live counters",
                "1/s",
                ours,
                _get(producer, "baseline", "records_per_s"),
                "higher",
                f">= {PRODUCER_RECORDS_PER_S_TARGET}",
                _check(ours, lambda v: v >= PRODUCER_RECORDS_PER_S_TARGET),
                _counters_note(producer),
            )
        )
    for figure, field, note in (
        (
            "Redis's own time per record (ceiling)",
            "redis_us_per_record",
            "command time of the run's batch calls (INFO commandstats), per record",
        ),
        (
            "sender's work per record before Redis (its ceiling)",
            "sender_encode_us_per_record",
            "pricing, counting the live deltas, encoding entry and arguments, packing "
            "the call as the sender's client does (fleettrace.packing); "
            "best of 5 batches of the run's mean size, in the producer's process",
        ),
    ):
        us = _get(producer, "fleettrace", field) if producer else None
        if us:
            rows.append(
                Row(
                    "producer",
                    figure,
                    "1/s",
                    round(1e6 / us),
                    None,
                    "higher",
                    note=f"{us} µs per record: {note}",
                )
            )
    rows += worker_rows(sections.get("worker", {}))
    fresh = sections.get("freshness", {})
    if fresh:
        for rate_key in sorted(
            _get(fresh, "fleettrace", "rates") or _get(fresh, "baseline", "rates") or {}, key=int
        ):
            ours = _get(fresh, "fleettrace", "rates", rate_key, "p99_ms")
            theirs = _get(fresh, "baseline", "rates", rate_key, "p99_ms")
            target, met = None, None
            if rate_key == FRESHNESS_TARGET_RATE:
                target = f"<= {FRESHNESS_P99_MS_TARGET:g}"
                met = _check(ours, lambda v: v <= FRESHNESS_P99_MS_TARGET)
            elif rate_key == "5000" and theirs is not None:
                target, met = (
                    f"<= baseline {theirs}",
                    _check(ours, lambda v, bound=theirs: v <= bound),
                )
            rows.append(
                Row(
                    "freshness",
                    f"p50 at {int(rate_key):,}/s",
                    "ms",
                    _get(fresh, "fleettrace", "rates", rate_key, "p50_ms"),
                    _get(fresh, "baseline", "rates", rate_key, "p50_ms"),
                    "lower",
                )
            )
            rows.append(
                Row(
                    "freshness",
                    f"p99 at {int(rate_key):,}/s",
                    "ms",
                    ours,
                    theirs,
                    "lower",
                    target,
                    met,
                    _sustained_note(fresh, rate_key),
                )
            )
        firsts = [
            r.get("first_records_ms")
            for r in (_get(fresh, "fleettrace", "rates") or {}).values()
            if r.get("first_records_ms") is not None
        ]
        rows.append(
            Row(
                "freshness",
                "first records of a new producer's stream, worst wait",
                "ms",
                max(firsts) if firsts else None,
                None,
                "lower",
                note="the warm-up records of each trial: a stream the worker has not seen "
                "waits for its discovery walk (once per producer identity); the rates "
                "above are read after it",
            )
        )
        ours = _get(fresh, "fleettrace", "ladder", "max_steady_per_s")
        rows.append(
            Row(
                "freshness",
                "highest steady rate (backlog not growing)",
                "1/s",
                ours,
                _get(fresh, "baseline", "ladder", "max_steady_per_s"),
                "higher",
                ">= 10000",
                _check(ours, lambda v: v >= 10_000),
            )
        )
    drain = sections.get("drain", {})
    if drain:
        ours = _get(drain, "fleettrace", "drain_s")
        records = _get(drain, "fleettrace", "records")
        theirs = _get(drain, "baseline", "projected_drain_s") or _get(drain, "baseline", "drain_s")
        rows.append(
            Row(
                "drain",
                f"drain {records or 0:,} records, 1 worker",
                "s",
                ours,
                theirs,
                "lower",
                f"<= {DRAIN_S_TARGET:g}" if records == 1_000_000 else None,
                _check(ours, lambda v: v <= DRAIN_S_TARGET) if records == 1_000_000 else None,
                "baseline projected from its drain rate"
                if _get(drain, "baseline", "projected_drain_s")
                else None,
            )
        )
    memory = sections.get("memory", {})
    if memory:
        peaks = memory.get("worker_peak_rss_mb", {})
        ours = peaks.get("fleettrace")
        rows.append(
            Row(
                "memory",
                "worker peak RSS",
                "MB",
                ours,
                peaks.get("baseline"),
                "lower",
                f"<= {WORKER_RSS_MB_TARGET:g}",
                _check(ours, lambda v: v <= WORKER_RSS_MB_TARGET),
            )
        )
        emitter = memory.get("emitter")
        if emitter:
            # The bound: the buffer, and the one batch the sender holds beside it while
            # it cannot send (counted as buffered, EmitterSettings.max_buffer_records).
            held = emitter["buffer_records"] + emitter["batch_records"]
            bounded = emitter["buffered_after_3x"] <= held and emitter[
                "growth_past_bound_mb"
            ] <= max(2.0, 0.05 * emitter["emitter_mb_at_bound"])
            rows.append(
                Row(
                    "memory",
                    f"emitter at its bound ({emitter['buffer_records']:,} records)",
                    "MB",
                    emitter["emitter_mb_at_bound"],
                    None,
                    "lower",
                    "no growth past the bound",
                    bounded,
                    f"{emitter['growth_past_bound_mb']} MB more after 2x the bound recorded; "
                    f"{emitter['buffered_after_3x']:,} held (the buffer and one batch in hand)",
                )
            )
    return rows


#: figure name, key in the section, target in ms.
_LIVE_READS = (
    ("is_over_budget p50", "is_over_budget_ms", 1.0),
    ("metrics scrape", "scrape_ms", 50.0),
    ("metrics --json", "metrics_json_ms", 50.0),
    ("read_live (every fleet key)", "read_live_ms", None),
)


def _live_read_rows(live: dict[str, Any]) -> list[Row]:
    """Reads while a worker runs (its snapshot current); the baseline column is the
    same read summing the producers' hashes in the same run."""
    if not live:
        return []
    note = (
        f"{live['producers']:,} producers, {live['label_sets']:,} label sets, "
        f"{live['plans']:,} plans; baseline: summing the producers"
    )
    rows = []
    for figure, key, target in _LIVE_READS:
        ours = _get(live, "aggregates", key)
        rows.append(
            Row(
                "live reads",
                figure,
                "ms",
                ours,
                _get(live, "summing_producers", key),
                "lower",
                None if target is None else f"<= {target:g}",
                None if target is None else _check(ours, lambda v, t=target: v <= t),
                note,
            )
        )
    return rows


def _counters_note(producer: dict[str, Any]) -> str | None:
    ours = producer.get("fleettrace")
    if not ours:
        return None
    ok = ours["counters_match"] and ours["records_in_redis"] == ours["records"]
    return (
        "stream and counters hold every record"
        if ok
        else (
            f"MISMATCH: {ours['records_in_redis']} of {ours['records']} in Redis, "
            f"counters match: {ours['counters_match']}"
        )
    )


def _sustained_note(fresh: dict[str, Any], rate_key: str) -> str:
    parts = []
    for name in ("fleettrace", "baseline"):
        trial = _get(fresh, name, "rates", rate_key)
        if trial:
            parts.append(f"{name} {'kept up' if trial['sustained'] else 'fell behind'}")
    return ", ".join(parts)


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def render(rows: list[Row]) -> str:
    header = ("section", "figure", "unit", "fleettrace", "baseline", "gain", "target", "status")
    table = [header] + [
        (
            r.section,
            r.figure,
            r.unit,
            _fmt(r.fleettrace),
            _fmt(r.baseline),
            "-" if r.gain is None else f"{r.gain:.1f}x",
            r.target or "",
            r.status,
        )
        for r in rows
    ]
    widths = [max(len(str(line[i])) for line in table) for i in range(len(header))]
    lines = []
    for index, line in enumerate(table):
        lines.append("  ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(line)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    notes = [f"  {r.figure}: {r.note}" for r in rows if r.note]
    if notes:
        lines += ["", "notes:", *notes]
    return "\n".join(lines)


def markdown(rows: list[Row]) -> str:
    lines = [
        "| section | figure | unit | fleettrace | baseline | gain | target | status |",
        "|---|---|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        gain = "-" if r.gain is None else f"{r.gain:.1f}x"
        lines.append(
            f"| {r.section} | {r.figure} | {r.unit} | {_fmt(r.fleettrace)} | {_fmt(r.baseline)} "
            f"| {gain} | {r.target or ''} | {r.status} |"
        )
    notes = [f"- {r.figure}: {r.note}" for r in rows if r.note]
    return "\n".join([*lines, *(["", *notes] if notes else [])])
