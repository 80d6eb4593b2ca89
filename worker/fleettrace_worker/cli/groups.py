"""``fleettrace groups``: see every consumer group on the streams, and drop one that
nothing runs any more (it would hold the trim floor, and Redis memory, for ever)."""

from __future__ import annotations

import argparse
from typing import Any, Final

from fleettrace.shards import shard_keys
from fleettrace_worker.cli import EXIT_FAILURE, EXIT_OK, options, render
from fleettrace_worker.cli.render import Column, Kind
from fleettrace_worker.context import WorkerSettings
from fleettrace_worker.stream.groups import (
    ACTIVE_WITHIN_S,
    DEFAULT_MAX_AGE_S,
    DEFAULT_MAX_LAG,
    GroupLimits,
    GroupReport,
    active_consumers,
    drop_group,
    inspect_groups,
)

LIST_COLUMNS: Final = (
    Column("stream", "STREAM"),
    Column("group", "GROUP", Kind.ID),
    Column("lag", "LAG", Kind.COUNT, "entries"),
    Column("pending", "PENDING", Kind.COUNT, "entries"),
    Column("consumers", "CONSUMERS", Kind.COUNT),
    Column("idle_s", "IDLE", Kind.DURATION, "s"),
    Column("age_s", "OLDEST NEEDED", Kind.DURATION, "s old"),
    Column("behind", "BEHIND"),
)


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
    options.add_data_dir_option(listing)
    render.add_output_options(listing, times=False)
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
    render.add_json_option(drop)
    drop.add_argument(
        "--force",
        action="store_true",
        help=f"drop it even though a consumer used it in the last {ACTIVE_WITHIN_S:g} s",
    )
    drop.set_defaults(handler=run_drop)


def _as_json(report: GroupReport, limits: GroupLimits) -> dict[str, Any]:
    return {
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
    render.check_sort(args, LIST_COLUMNS)
    limits = _limits(args)
    keys = options.keys(args)
    client = options.redis_client(args)
    shards = shard_keys(client, keys, "reading consumer groups")
    reports = [r for shard in shards for r in inspect_groups(client, shard)]
    items = [_as_json(report, limits) for report in reports]
    behind = sum(item["behind"] for item in items)
    streams = len({item["stream"] for item in items})
    footer = (
        f"{render.count_of(len(items), 'consumer group')} on {render.count_of(streams, 'stream')}"
        f"; {behind:,} behind"
    )
    render.emit(
        args,
        LIST_COLUMNS,
        items,
        footer=footer,
        empty=f"no consumer groups in {options.describe_scope(keys.namespace)}",
        title=f"consumer groups of {options.describe_scope(keys.namespace)}",
        default_sort="stream,group",
        context={"namespace": keys.namespace},
    )
    return EXIT_OK


def run_drop(args: argparse.Namespace) -> int:
    client, keys = options.redis_client(args), options.keys(args)
    result: dict[str, Any] = {"group": args.name, "dropped_from": []}
    shards = shard_keys(client, keys, "reading consumer groups")  # every shard's streams
    reports = [r for shard in shards for r in inspect_groups(client, shard) if r.group == args.name]
    if not reports:
        return _refuse(
            args, f"no consumer group {args.name!r} in {options.describe_scope(keys.namespace)}"
        )
    active = active_consumers(reports, args.name)
    if active and not args.force:
        names = ", ".join(sorted({c.name for c in active}))
        return _refuse(
            args,
            f"consumer group {args.name!r} was used {min(c.idle_s for c in active):.1f} s ago "
            f"(by {names}): stop the workers that run it first, or pass --force",
        )
    pending = sum(r.pending for r in reports)
    lag = sum(r.lag or 0 for r in reports)
    question = (
        f"Drop consumer group {args.name!r} on {len(reports)} stream(s)? Its {pending:,} "
        f"pending and {lag:,} undelivered entries will no longer be kept for it."
    )
    if not options.confirm(question, yes=args.yes):
        return _refuse(args, "nothing dropped")
    streams = [stream for shard in shards for stream in drop_group(client, shard, args.name)]
    if args.json:
        render.write_object({**result, "dropped_from": streams})
    else:
        print(f"dropped consumer group {args.name!r} from {', '.join(streams) or 'no stream'}")
    return EXIT_OK


def _refuse(args: argparse.Namespace, why: str) -> int:
    """Nothing dropped, and why: a line, or with --json the same in an object."""
    if args.json:
        render.write_object({"group": args.name, "dropped_from": [], "refused": why})
    else:
        print(why)
    return EXIT_FAILURE
