"""The trim rule: a stream keeps every entry that some consumer group still needs.

For each group on a stream, the first entry it still needs is its oldest pending
entry (delivered, not yet acknowledged) or, when nothing is pending, the entry after
its last-delivered id. The stream is trimmed with ``XTRIM MINID`` to the lowest of
those over its groups, so no pending entry and no undelivered entry is ever removed.

Only groups that exist count: with LangSmith forwarding off there is no
``langsmith`` group and the stream is trimmed as soon as ``persist`` is done with
it. A stream without any group is never trimmed (nobody has consumed it yet). A
group created later starts from what is left.

Both inputs only move forward (ids grow, acknowledgements only shrink the pending
list), so the floor read before XTRIM is still safe when XTRIM runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from fleettrace.keys import Keys
from fleettrace.redis_errors import translate_redis_errors
from fleettrace_worker.stream.consumer import GroupState, group_states


def _parse(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def next_entry_id(entry_id: str) -> str:
    """The smallest id after ``entry_id``."""
    ms, seq = _parse(entry_id)
    return f"{ms}-{seq + 1}"


def group_floor(state: GroupState) -> tuple[int, int]:
    """The first id this group still needs."""
    floor = _parse(next_entry_id(state.last_delivered_id))
    if state.oldest_pending_id is not None:
        floor = min(floor, _parse(state.oldest_pending_id))
    return floor


def trim_floors(states: list[GroupState]) -> dict[str, str]:
    """Per stream, the lowest id any of its groups still needs."""
    floors: dict[str, tuple[int, int]] = {}
    for state in states:
        floor = group_floor(state)
        current = floors.get(state.stream)
        floors[state.stream] = floor if current is None else min(current, floor)
    return {stream: f"{ms}-{seq}" for stream, (ms, seq) in floors.items()}


def trim_streams(
    client: redis.Redis,
    keys: Keys,
    *,
    approximate: bool = True,
    streams: Sequence[str] | None = None,
) -> dict[str, int]:
    """Trim each stream of the namespace (``streams``, else every one a walk finds) to
    its floor; returns entries removed per stream.

    ``approximate`` lets Redis trim whole macro nodes only (cheaper; it removes less,
    never more).
    """
    removed: dict[str, int] = {}
    floors = trim_floors(group_states(client, keys, streams))
    with translate_redis_errors("trimming the streams"):
        for stream, floor in floors.items():
            removed[stream] = int(client.xtrim(stream, minid=floor, approximate=approximate))
    return removed
