"""``fleettrace metrics``: the live counters as a table, as JSON, or refreshed in place.

The fleet-wide series print by default; per-plan series (one hash per plan, thousands
of plans in a busy fleet) only on request: ``--plan ID`` for one plan, ``--top N``
for the costliest. Without either, one line says how many plans hold live counters.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any, Final

import redis

from fleettrace.keys import Keys
from fleettrace.live import LiveSeries, read_live
from fleettrace.metrics import MetricKey, MetricType
from fleettrace.plans import (
    PlanFigures,
    count_plans,
    legacy_plan_fields,
    migrate_legacy_plan_fields,
    read_plan,
    top_plans,
)
from fleettrace_worker.cli import options

DEFAULT_WATCH_S: Final = 2.0
_COLUMNS: Final = ("key", "labels", "count", "sum/value", "p50", "p95", "p99")
_PLAN_COLUMNS: Final = ("plan", "cost_usd", "priced_calls", "decisions", "child_plans")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "metrics",
        help="print the live counters",
        description="Print the live counters of the namespace: per metric key and label set "
        "the count, the sum (or a gauge's value) and, for histograms, the nearest-rank "
        "percentiles p50/p95/p99, each within 2 % of the exact one. "
        "Per-plan counters (plan.cost_usd, plan.decisions_count, plan.child_plans_count) are "
        "summed up in one line; --plan ID or --top N prints them.",
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
    per_plan = parser.add_mutually_exclusive_group()
    per_plan.add_argument(
        "--plan", metavar="ID", help="print this plan's counters instead of the fleet's"
    )
    per_plan.add_argument(
        "--top",
        type=options.POSITIVE,
        metavar="N",
        help="print the N plans with the highest cost, costliest first, one line each",
    )
    per_plan.add_argument(
        "--migrate-plans",
        action="store_true",
        help="move the per-plan fields that older emitters left in the "
        "{ns}:live:plan.* hashes into per-plan hashes, then exit",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    client = options.redis_client(args)
    keys = options.keys(args)
    try:
        if args.migrate_plans:
            moved = migrate_legacy_plan_fields(client, keys)
            print(
                f"moved {moved} per-plan fields from {keys.legacy_live('plan.*')} into plan hashes"
            )
            return 0
        while True:
            text = _render(client, keys, args)
            if not args.json:  # JSON says it in every item
                text = f"{options.describe_scope(keys.namespace)}\n{text}"
            if args.watch is not None and sys.stdout.isatty():
                sys.stdout.write("\x1b[H\x1b[2J")
            print(text, flush=True)
            if args.watch is None:
                return 0
            time.sleep(args.watch)
    finally:
        client.close()


def _render(client: redis.Redis, keys: Keys, args: argparse.Namespace) -> str:
    key = MetricKey(args.key) if args.key else None
    if args.plan is not None:
        plan = read_plan(client, keys, args.plan)
        series = [] if plan is None else [s for s in plan.series if key in (None, s.key)]
        if args.json:
            return render_json(series, keys.namespace)
        if not series:
            return f"no live counters for plan {args.plan!r} (never recorded, or expired)"
        return render_table(series)
    if args.top is not None:
        scan = top_plans(client, keys, args.top)
        if not scan.complete:
            print(
                f"fleettrace metrics: examined the first {scan.examined} plans only",
                file=sys.stderr,
            )
        if args.json:
            return render_plans_json(scan.plans, keys.namespace)
        return render_plans(scan.plans)
    if key is not None and key.spec.per_plan:  # no fleet-wide series: only the summary
        return "[]" if args.json else _plans_summary(client, keys) or "no live plans"
    series = read_live(client, keys, key)
    if args.json:
        return render_json(series, keys.namespace)
    if key is not None:
        return render_table(series)
    return "\n".join(line for line in (render_table(series), _plans_summary(client, keys)) if line)


def _plans_summary(client: redis.Redis, keys: Keys) -> str:
    """One line about the per-plan counters, which the fleet table leaves out."""
    plans, complete = count_plans(client, keys)
    legacy = legacy_plan_fields(client, keys)
    if not plans and not legacy:
        return ""
    noun = "plan" if plans == 1 and complete else "plans"
    text = f"{plans}{'' if complete else '+'} live {noun}; use --plan ID or --top N"
    if legacy:
        text += (
            f"\n{legacy} per-plan fields in the old layout ({keys.legacy_live('plan.*')}); "
            "move them with --migrate-plans"
        )
    return text


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
    unsketched = sum(s.unsketched for s in series)
    if unsketched:
        lines.append(
            f"percentiles leave out {unsketched} observations that emitters older than "
            "the sketches recorded (counted in count and sum)"
        )
    return "\n".join(lines)


def _as_json(series: LiveSeries, namespace: str) -> dict[str, Any]:
    return {
        "namespace": namespace,
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
        # Observations in the le= fields of older emitters, outside the percentiles.
        "unsketched": series.unsketched,
    }


def render_json(series: list[LiveSeries], namespace: str) -> str:
    return json.dumps([_as_json(s, namespace) for s in series])


def render_plans(plans: list[PlanFigures]) -> str:
    """One line per plan under a header, in the order given."""
    if not plans:
        return "no live plans"
    rows = [
        (p.plan_id, f"{p.cost_usd:.6g}", str(p.priced_calls), str(p.decisions), str(p.child_plans))
        for p in plans
    ]
    widths = [max(len(row[i]) for row in (_PLAN_COLUMNS, *rows)) for i in range(len(_PLAN_COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (_PLAN_COLUMNS, *rows)
    )


def render_plans_json(plans: list[PlanFigures], namespace: str) -> str:
    return json.dumps(
        [
            {
                "namespace": namespace,
                "plan": p.plan_id,
                "cost_usd": p.cost_usd,
                "priced_calls": p.priced_calls,
                "decisions": p.decisions,
                "child_plans": p.child_plans,
            }
            for p in plans
        ]
    )
