"""``fleettrace metrics``: the live counters as a table, as JSON, or refreshed in place."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any, Final

from fleettrace.live import LiveSeries, read_live
from fleettrace.metrics import MetricKey, MetricType
from fleettrace_worker.cli import options

DEFAULT_WATCH_S: Final = 2.0
_COLUMNS: Final = ("key", "labels", "count", "sum/value", "p50", "p95", "p99")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "metrics",
        help="print the live counters",
        description="Print the live counters of the namespace: per metric key and label set "
        "the count, the sum (or a gauge's value) and, for histograms, estimated percentiles.",
    )
    options.add_redis_options(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--watch",
        nargs="?",
        const=DEFAULT_WATCH_S,
        type=options.Seconds(),
        metavar="SECONDS",
        help=f"refresh every SECONDS (default {DEFAULT_WATCH_S:g}) until Ctrl-C",
    )
    parser.add_argument(
        "--key",
        choices=[key.value for key in MetricKey],
        metavar="KEY",
        help="only this metric key (one of: " + ", ".join(k.value for k in MetricKey) + ")",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    client = options.redis_client(args)
    keys = options.keys(args)
    try:
        while True:
            series = read_live(client, keys, args.key)
            text = render_json(series) if args.json else render_table(series)
            if args.watch is not None and sys.stdout.isatty():
                sys.stdout.write("\x1b[H\x1b[2J")
            print(text, flush=True)
            if args.watch is None:
                return 0
            time.sleep(args.watch)
    finally:
        client.close()


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.6g}"


def _labels(series: LiveSeries) -> str:
    return ",".join(f"{name}={value}" for name, value in series.labels) or "-"


def render_table(series: list[LiveSeries]) -> str:
    if not series:
        return "no live counters yet"
    rows = [
        (
            s.key.value,
            _labels(s),
            str(s.count),
            _number(s.value if s.key.spec.type is MetricType.GAUGE else s.sum),
            _number(s.p50),
            _number(s.p95),
            _number(s.p99),
        )
        for s in series
    ]
    widths = [max(len(row[i]) for row in (_COLUMNS, *rows)) for i in range(len(_COLUMNS))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (_COLUMNS, *rows)
    ]
    return "\n".join(lines)


def _as_json(series: LiveSeries) -> dict[str, Any]:
    return {
        "key": series.key.value,
        "type": series.key.spec.type.value,
        "unit": series.key.spec.unit,
        "labels": dict(series.labels),
        "count": series.count,
        "sum": series.sum,
        "value": series.value,
        "buckets": [
            {"le": "+Inf" if math.isinf(bound) else bound, "count": count}
            for bound, count in series.buckets
        ],
        "p50": series.p50,
        "p95": series.p95,
        "p99": series.p99,
    }


def render_json(series: list[LiveSeries]) -> str:
    return json.dumps([_as_json(s) for s in series])
