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
from fleettrace_worker.cli import options, render
from fleettrace_worker.cli.cells import text_sort_key
from fleettrace_worker.cli.render import Column, Kind

DEFAULT_WATCH_S: Final = 2.0
#: Each row in its key's unit: dollars for USD, 3 significant digits for ms and s.
SERIES_COLUMNS: Final = (
    Column("key", "KEY", Kind.ID),
    Column("labels", "LABELS"),
    Column("unit", "UNIT"),
    Column("count", "COUNT", Kind.COUNT),
    Column("sum", "SUM", Kind.NUMBER, unit_key="unit"),
    Column("value", "VALUE", Kind.NUMBER, unit_key="unit"),
    Column("p50", "P50", Kind.DURATION, unit_key="unit"),
    Column("p95", "P95", Kind.DURATION, unit_key="unit"),
    Column("p99", "P99", Kind.DURATION, unit_key="unit"),
)
#: Natural order: plan-2 before plan-10, by key, then by labels.
SERIES_ORDER: Final = "key,labels"
PLAN_COLUMNS: Final = (
    Column("plan", "PLAN", Kind.ID),
    Column("cost_usd", "COST", Kind.USD, "USD"),
    Column("priced_calls", "PRICED CALLS", Kind.COUNT),
    Column("decisions", "DECISIONS", Kind.COUNT),
    Column("child_plans", "CHILD PLANS", Kind.COUNT),
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "metrics",
        help="print the live counters",
        description="Print the live counters of the namespace: per metric key and label set "
        "the count, the sum (or a gauge's value) and, for histograms, the nearest-rank "
        "percentiles p50/p95/p99, each within 2 % of the exact one. "
        "Per-plan counters (plan.cost_usd, plan.decisions_count, plan.child_plans_count, "
        "plan.budget_usd) are "
        "summed up in one line; --plan ID or --top N prints them.",
    )
    options.add_redis_options(parser)
    options.add_data_dir_option(parser)
    render.add_output_options(parser, times=False)
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
        help="print the N plans with the highest cost, costliest first (--sort to reorder), "
        "one line each",
    )
    per_plan.add_argument(
        "--migrate-plans",
        action="store_true",
        help="move the per-plan fields that older emitters left in the "
        "{ns}:live:plan.* hashes into per-plan hashes, then exit",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    render.check_sort(args, PLAN_COLUMNS if args.top is not None else SERIES_COLUMNS)
    client = options.redis_client(args)
    keys = options.keys(args)
    try:
        if args.migrate_plans:
            moved = migrate_legacy_plan_fields(client, keys)
            if args.json:
                render.write_object({"moved": moved})
            else:
                print(
                    f"moved {moved} per-plan fields from {keys.legacy_live('plan.*')} "
                    "into plan hashes"
                )
            return 0
        while True:
            if args.watch is not None and sys.stdout.isatty():
                sys.stdout.write("\x1b[H\x1b[2J")
            _show(client, keys, args)
            sys.stdout.flush()
            if args.watch is None:
                return 0
            time.sleep(args.watch)
    finally:
        client.close()


def _show(client: redis.Redis, keys: Keys, args: argparse.Namespace) -> None:
    key = MetricKey(args.key) if args.key else None
    if args.plan is not None:
        plan = read_plan(client, keys, args.plan)
        series = [] if plan is None else [s for s in plan.series if key in (None, s.key)]
        _series(
            args,
            keys,
            series,
            f"no live counters for plan {args.plan!r} (never recorded, or expired)",
        )
        return
    if args.top is not None:
        scan = top_plans(client, keys, args.top)
        if not scan.complete:
            print(
                f"fleettrace metrics: examined the first {scan.examined} plans only",
                file=sys.stderr,
            )
        plans = [plan_json(p) for p in scan.plans]
        total, complete = count_plans(client, keys) if plans and not args.json else (0, True)
        total = max(total, len(plans))
        footer = (
            render.footer(len(plans), total, "live plan")
            if complete
            else f"showing {len(plans):,} of {total:,}+ live plans"
        )
        render.emit(
            args,
            PLAN_COLUMNS,
            plans,
            footer=footer,
            empty=f"no live plans in {_scope(keys)}",
            title=f"live plans of {_scope(keys)}",
            context={"namespace": keys.namespace},
        )
        return
    if key is not None and key.spec.per_plan:  # no fleet-wide series: only the summary
        if args.json:
            render.write_list([], None, {"namespace": keys.namespace})
        else:
            print(_plans_summary(client, keys) or f"no live plans in {_scope(keys)}")
        return
    series = read_live(client, keys, key)
    _series(args, keys, series, "no live counters yet")
    if key is None and not args.json:
        summary = _plans_summary(client, keys)
        if summary:
            print(summary)


def _scope(keys: Keys) -> str:
    return options.describe_scope(keys.namespace)


def _series(args: argparse.Namespace, keys: Keys, series: list[LiveSeries], empty: str) -> None:
    """The series as a table titled with the namespace, or ``--json`` saying it."""
    unsketched = sum(s.unsketched for s in series)
    note = (
        f"percentiles leave out {unsketched} observations that emitters older than the "
        "sketches recorded (counted in count and sum)"
        if unsketched
        else None
    )
    if getattr(args, "json", False) and not getattr(args, "sort", None):
        # The default order and --json: written straight from the series (the same
        # text as below, without 20,000 intermediate objects for 1,000 histograms).
        ordered = sorted(series, key=_default_order)
        render.write_encoded_list([series_text(s) for s in ordered], None, _context(keys))
        return
    items = [series_json(s) for s in series]
    render.emit(
        args,
        SERIES_COLUMNS,
        items,
        footer=note,
        empty=f"{empty} in {_scope(keys)}",
        title=f"live counters of {_scope(keys)}",
        default_sort=SERIES_ORDER,
        context=_context(keys),
    )


def _context(keys: Keys) -> dict[str, Any]:
    return {"namespace": keys.namespace}


def _default_order(series: LiveSeries) -> tuple[Any, Any]:
    """SERIES_ORDER's sort key (key, then labels, naturally) of the item a series
    makes, as ``render.ordered`` computes it."""
    return (text_sort_key(series.key.value), text_sort_key(dict(series.labels)))


#: ``{"le": <bound>, "count": `` by bound (0.0 is cached, -0.0 is not: they print apart).
_BUCKET_HEADS: dict[float, str] = {}
_encode = json.JSONEncoder(allow_nan=False).encode


def _bucket_head(bound: float) -> str:
    le = _encode("+Inf" if math.isinf(bound) else bound)
    return f'{{"le": {le}, "count": '


def series_text(series: LiveSeries) -> str:
    """``render.dumps(series_json(series))``, made without the bucket objects: the
    classic buckets are most of a histogram's text, each a cached head and a count. A
    figure JSON cannot hold (NaN, an infinity) takes the general path (null)."""
    spec = series.key.spec
    try:
        head = _encode(
            {
                "key": series.key.value,
                "type": spec.type.value,
                "unit": spec.unit,
                "labels": dict(series.labels),
                "count": series.count,
                "sum": None if spec.type is MetricType.GAUGE else series.sum,
                "value": series.value,
            }
        )
        parts = []
        for bound, count in series.buckets:
            text = _BUCKET_HEADS.get(bound) if bound else _bucket_head(bound)
            if text is None:
                text = _BUCKET_HEADS.setdefault(bound, _bucket_head(bound))
            if type(count) is not int:
                raise ValueError("a count that is not an integer")
            parts.append(f"{text}{count}}}")
        tail = _encode(
            {
                "p50": series.p50,
                "p95": series.p95,
                "p99": series.p99,
                "unsketched": series.unsketched,
            }
        )
    except (TypeError, ValueError):
        return render.dumps(series_json(series))
    return f'{head[:-1]}, "buckets": [{", ".join(parts)}], {tail[1:]}'


def _plans_summary(client: redis.Redis, keys: Keys) -> str:
    """One line about the per-plan counters, which the fleet table leaves out."""
    plans, complete = count_plans(client, keys)
    legacy = legacy_plan_fields(client, keys)
    if not plans and not legacy:
        return ""
    noun = "plan" if plans == 1 and complete else "plans"
    text = f"{plans:,}{'' if complete else '+'} live {noun}; use --plan ID or --top N"
    if legacy:
        text += (
            f"\n{legacy} per-plan fields in the old layout ({keys.legacy_live('plan.*')}); "
            "move them with --migrate-plans"
        )
    return text


def series_json(series: LiveSeries) -> dict[str, Any]:
    """One series as ``--json`` prints it (and the table shows it)."""
    return {
        "key": series.key.value,
        "type": series.key.spec.type.value,
        "unit": series.key.spec.unit,
        "labels": dict(series.labels),
        "count": series.count,
        # A gauge keeps its last value, no sum: null, not a 0 that reads as measured.
        "sum": None if series.key.spec.type is MetricType.GAUGE else series.sum,
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


def plan_json(plan: PlanFigures) -> dict[str, Any]:
    """One plan's figures; its cost is null (unknown) while no call of it was priced."""
    return {
        "plan": plan.plan_id,
        "cost_usd": plan.cost_usd if plan.priced_calls else None,
        "priced_calls": plan.priced_calls,
        "decisions": plan.decisions,
        "child_plans": plan.child_plans,
    }
