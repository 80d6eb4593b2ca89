"""The dead letters the dashboard lists and replays: one page of a group's, in one shard.

Dead letters are each shard's own (``{ns:s}:dlq:<group>``, docs/scaling.md), so the
``/dlq`` page has a section per shard and group and ``/api/dlq`` takes ``?shard=``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import redis

from fleettrace.errors import ConfigurationError
from fleettrace.keys import Keys
from fleettrace.shards import parse_shard as parse_shard_number
from fleettrace_worker.serve.dashboard.queries import QueryError
from fleettrace_worker.stream.deadletter import DeadLetter, check_ids


def parse_shard(raw: str | None) -> int:
    """``?shard=``: a shard number of the namespace (docs/scaling.md), 0 when absent."""
    if raw is None or raw == "":
        return 0
    try:
        shard = parse_shard_number(raw, "shard")
    except ValueError as error:
        raise QueryError(str(error)) from None
    return 0 if shard is None else shard


def _entry_time(entry_id: str) -> str:
    ms = int(entry_id.partition("-")[0])
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def dead_letter_items(
    client: redis.Redis, keys: Keys, group: str, after: str | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of a group's dead letters, oldest first, from after the id ``after``."""
    if after is not None:
        try:
            check_ids([after])
        except ConfigurationError:
            raise QueryError("cursor is not one this server gave out") from None
    low = "-" if after is None else f"({after}"
    rows: Any = client.xrange(keys.dead_letters(group), min=low, max="+", count=limit + 1)
    items = []
    for raw_id, fields in rows[:limit]:
        letter = DeadLetter.from_fields(fields)
        dead_id = raw_id.decode()
        items.append(
            {
                "group": group,
                "shard": keys.shard,
                "id": dead_id,
                "time": _entry_time(dead_id),
                "stream": letter.stream,
                "entry_id": letter.entry_id,
                "kind": letter.kind,
                "consumer": letter.consumer,
                "reason": letter.reason,
                "replayable": letter.record is not None or letter.original is not None,
            }
        )
    more = len(rows) > limit
    return items, items[-1]["id"] if more else None
