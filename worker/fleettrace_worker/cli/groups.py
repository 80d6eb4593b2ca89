"""``fleettrace groups``: see every consumer group on the streams, and drop one that
nothing runs any more (it would hold the trim floor, and Redis memory, for ever)."""

from __future__ import annotations

import argparse
import json

from fleettrace_worker.cli import EXIT_FAILURE, EXIT_OK, options
from fleettrace_worker.groups import (
    ACTIVE_WITHIN_S,
    DEFAULT_MAX_AGE_S,
    DEFAULT_MAX_LAG,
    GroupLimits,
    GroupReport,
    active_consumers,
    drop_group,
    inspect_groups,
)
from fleettrace_worker.runner import WorkerSettings


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "groups",
        help="list consumer groups, or drop one nothing runs any more",
        description="A stream is trimmed only below what every consumer group on it still "
        "needs: a group nothing reads any more keeps the stream growing.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser(
        "list", help="lag, pending entries, consumers and last activity of every group"
    )
    options.add_redis_options(listing)
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.add_argument(
        "--max-lag",
        type=options.WholeNumber(low=0),
        metavar="N",
        help="mark a group BEHIND past this lag (default: $FLEETTRACE_WORKER_GROUP_MAX_LAG, "
        f"else {DEFAULT_MAX_LAG}, as the worker)",
    )
    listing.add_argument(
        "--max-age-s",
        type=options.Seconds(zero_ok=True),
        metavar="S",
        help="mark a group BEHIND when the oldest entry it needs is older "
        f"(default: $FLEETTRACE_WORKER_GROUP_MAX_AGE_S, else {DEFAULT_MAX_AGE_S:g})",
    )
    listing.set_defaults(handler=run_list)

    drop = actions.add_parser(
        "drop",
        help="destroy a consumer group on every stream",
        description="Destroy the group on both streams, so it no longer holds the trim "
        "floor. What it had not acknowledged is no longer kept for it; its dead letters "
        "stay. Stop the workers that run it first (turn forwarding off for langsmith).",
    )
    options.add_redis_options(drop)
    drop.add_argument("name", metavar="NAME", help="the group, e.g. langsmith")
    options.add_yes_option(drop)
    drop.add_argument(
        "--force",
        action="store_true",
        help=f"drop it even though a consumer used it in the last {ACTIVE_WITHIN_S:g} s",
    )
    drop.set_defaults(handler=run_drop)


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.1f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _as_json(report: GroupReport, limits: GroupLimits, namespace: str) -> dict[str, object]:
    return {
        "namespace": namespace,
        "stream": report.stream,
        "group": report.group,
        "lag": report.lag,
        "pending": report.pending,
        "consumers": [
            {"name": c.name, "pending": c.pending, "idle_s": round(c.idle_s, 3)}
            for c in report.consumers
        ],
        "idle_s": None if report.idle_s is None else round(report.idle_s, 3),
        "last_delivered_id": report.last_delivered_id,
        "oldest_needed_id": report.oldest_needed_id,
        "age_s": round(report.age_s, 3),
        "behind": report.behind(limits),
    }


def _limits(args: argparse.Namespace) -> GroupLimits:
    """The worker's limits (its variables), unless given here."""
    worker = WorkerSettings.from_env("redis://unused", "postgresql://unused")
    return GroupLimits(
        max_lag=worker.group_max_lag if args.max_lag is None else args.max_lag,
        max_age_s=worker.group_max_age_s if args.max_age_s is None else args.max_age_s,
    )


def run_list(args: argparse.Namespace) -> int:
    limits = _limits(args)
    keys = options.keys(args)
    reports = inspect_groups(options.redis_client(args), keys)
    if args.json:
        for report in reports:
            print(json.dumps(_as_json(report, limits, keys.namespace)))
        return EXIT_OK
    if not reports:
        print(f"no consumer groups in {options.describe_scope(keys.namespace)}")
        return EXIT_OK
    print(f"consumer groups of {options.describe_scope(keys.namespace)}")
    header = ("STREAM", "GROUP", "LAG", "PENDING", "CONSUMERS", "LAST SEEN", "OLDEST NEEDED", "")
    rows = [header]
    for report in reports:
        rows.append(
            (
                report.stream,
                report.group,
                "?" if report.lag is None else f"{report.lag:,}",
                f"{report.pending:,}",
                str(len(report.consumers)),
                _ago(report.idle_s),
                "-" if report.oldest_needed_id is None else f"{report.age_s:,.0f} s old",
                "BEHIND" if report.behind(limits) else "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return EXIT_OK


def run_drop(args: argparse.Namespace) -> int:
    client, keys = options.redis_client(args), options.keys(args)
    reports = [r for r in inspect_groups(client, keys) if r.group == args.name]
    if not reports:
        print(f"no consumer group {args.name!r} in {options.describe_scope(keys.namespace)}")
        return EXIT_FAILURE
    active = active_consumers(reports, args.name)
    if active and not args.force:
        names = ", ".join(sorted({c.name for c in active}))
        print(
            f"consumer group {args.name!r} was used {min(c.idle_s for c in active):.1f} s ago "
            f"(by {names}): stop the workers that run it first, or pass --force"
        )
        return EXIT_FAILURE
    pending = sum(r.pending for r in reports)
    lag = sum(r.lag or 0 for r in reports)
    question = (
        f"Drop consumer group {args.name!r} on {len(reports)} stream(s)? Its {pending:,} "
        f"pending and {lag:,} undelivered entries will no longer be kept for it."
    )
    if not options.confirm(question, yes=args.yes):
        print("nothing dropped")
        return EXIT_FAILURE
    streams = drop_group(client, keys, args.name)
    print(f"dropped consumer group {args.name!r} from {', '.join(streams) or 'no stream'}")
    return EXIT_OK
