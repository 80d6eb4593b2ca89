"""What the dashboard reads, and the checks on what a query string asks for.

Every query-string value is checked here before anything reads with it; a value that
does not fit is a :class:`QueryError` with a one-line message and its HTTP status (400,
or 404 for a namespace Redis knows nothing of), never a 500. Messages quote a value
only shortened and through ``repr``; the pages escape them again when they show them.

Cost and plans come from PostgreSQL (``llm_traces``), the live figures, the plans'
live cost and the dead letters from Redis through the public readers of
:mod:`fleettrace.live`, :mod:`fleettrace.plans` and :mod:`fleettrace_worker.stream.deadletter`.
Every SQL read is of one namespace, the one whose Redis keys the same request reads
(bound as a parameter; ``llm_traces_namespace_idx`` leads with it and ``started_at``).
Rows stored before schema version 3 carry no namespace and are shown under none.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg
import redis
from psycopg import sql
from psycopg.rows import dict_row

from fleettrace.errors import ConfigurationError
from fleettrace.keys import Keys
from fleettrace.live import read_live
from fleettrace.plans import top_plans, total_cost_usd
from fleettrace.shards import shard_keys
from fleettrace_worker.keys import GROUPS
from fleettrace_worker.serve.dashboard import fleet_health, rollup
from fleettrace_worker.stream.groups import inspect_groups

#: The largest page a list endpoint returns, and the default.
MAX_LIMIT: Final = 500
DEFAULT_LIMIT: Final = 100
#: The longest range a cost or plans query may span.
MAX_RANGE: Final = timedelta(days=400)
#: Query-string values longer than this are refused before anything else.
MAX_VALUE_CHARS: Final = 200
#: Named ranges of the Cost page; the default is the last day.
RANGES: Final = {
    "1h": timedelta(hours=1),
    "24h": timedelta(days=1),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
    "90d": timedelta(days=90),
}
DEFAULT_RANGE: Final = "24h"
#: What cost can be grouped by: the column of each (a fixed list, never the input).
#: ``tag`` is each element of ``tags``: a call with two tags counts under both, one
#: without any under none (NULL), so the keys' sums are not the total for ``tag``.
COST_GROUPS: Final = {
    "model": "model",
    "provider": "provider",
    "actor": "actor",
    "tag": "tag",
    "user": "user_id",
}
#: The rows cost is grouped over: the calls, or for ``tag`` one row per call and tag.
_COST_SOURCES: Final = {
    "tag": sql.SQL("llm_traces LEFT JOIN LATERAL unnest(tags) AS tag ON true"),
}
_CALLS: Final = sql.SQL("llm_traces")
#: Groupings in which each call counts once (the key sums are the total).
ONCE_PER_CALL: Final = tuple(by for by in COST_GROUPS if by not in _COST_SOURCES)
#: Chart steps, the smallest that keeps a range under MAX_POINTS buckets is used.
STEPS_S: Final = (60, 300, 900, 3600, 6 * 3600, 86400)
MAX_POINTS: Final = 300
TOP_PLANS: Final = 10
#: Cost over a range longer than this reads the hourly rollup for its whole hours
#: (:mod:`.rollup`); shorter ranges read the raw rows, which are few.
ROLLUP_AFTER: Final = timedelta(days=2)
STATEMENT_TIMEOUT_MS: Final = 10_000


class QueryError(Exception):
    """A query string the dashboard cannot answer; ``status`` is 4xx."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def shown(value: str) -> str:
    """A value for a message: shortened, quoted by repr (escaped again on pages)."""
    return repr(value[:40] + ("..." if len(value) > 40 else ""))


def check_lengths(params: dict[str, str]) -> None:
    for name, value in params.items():
        if len(value) > MAX_VALUE_CHARS or len(name) > MAX_VALUE_CHARS:
            raise QueryError(f"{name[:40]!r} is longer than {MAX_VALUE_CHARS} characters")


def namespace_keys(client: redis.Redis, default: str, asked: str | None) -> Keys:
    """The key layout of ``?namespace=`` (the default one when absent). A name that is
    not a namespace is a 400; one of which Redis holds no stream, producer or dead
    letter a 404 (a typo should not show an empty, healthy-looking fleet)."""
    if not asked or asked == default:
        return Keys(default)
    try:
        keys = Keys(asked)
    except (ConfigurationError, ValueError):
        raise QueryError(
            f"namespace {shown(asked)} is not a namespace name (1-64 letters, digits, "
            "'_', '.' or '-')"
        ) from None
    known = client.exists(
        *keys.streams, keys.producers, *(keys.dead_letters(group) for group in GROUPS)
    )
    if not known:
        raise QueryError(
            f"unknown namespace {shown(asked)}: Redis holds no stream, producer or "
            "dead letter of it",
            status=404,
        )
    return keys


def parse_limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise QueryError(f"limit must be a whole number from 1 to {MAX_LIMIT}, got {shown(raw)}")
    return int(raw)


def _moment(name: str, raw: str) -> datetime:
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise QueryError(
            f"{name} must be an ISO 8601 time such as 2026-01-31T12:00:00Z, got {shown(raw)}"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class TimeRange:
    start: datetime
    end: datetime
    label: str

    @property
    def step_s(self) -> int:
        span = (self.end - self.start).total_seconds()
        return next((s for s in STEPS_S if span / s <= MAX_POINTS), STEPS_S[-1])


def parse_range(
    params: dict[str, str], now: datetime | None = None, *, default: str = DEFAULT_RANGE
) -> TimeRange:
    """``range=1h|24h|7d|30d|90d``, or ``from``/``to`` (ISO 8601; UTC when no zone is
    given; ``to`` defaults to now). ``from`` must be before ``to``."""
    now = now or datetime.now(UTC)
    start_raw, end_raw = params.get("from") or "", params.get("to") or ""
    if not start_raw and not end_raw:
        name = params.get("range") or default
        if name not in RANGES:
            raise QueryError(f"range must be one of {', '.join(RANGES)}, got {shown(name)}")
        return TimeRange(now - RANGES[name], now, name)
    if not start_raw:
        raise QueryError("from is needed with to (an ISO 8601 time)")
    start = _moment("from", start_raw)
    end = _moment("to", end_raw) if end_raw else now
    if start >= end:
        raise QueryError("from must be before to (the range is reversed or empty)")
    if end - start > MAX_RANGE:
        raise QueryError(f"the range may span at most {MAX_RANGE.days} days")
    return TimeRange(start, end, "custom")


def parse_choice(name: str, raw: str | None, choices: dict[str, str], default: str) -> str:
    value = raw or default
    if value not in choices:
        raise QueryError(f"{name} must be one of {', '.join(choices)}, got {shown(value)}")
    return value


def encode_cursor(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def decode_cursor(raw: str | None) -> str | None:
    if not raw:
        return None
    try:
        padded = raw + "=" * (-len(raw) % 4)
        return base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        raise QueryError("cursor is not one this server gave out") from None


def listing(items: list[dict[str, Any]], next_cursor: str | None = None) -> dict[str, Any]:
    """The list shape every list endpoint answers with, also when empty."""
    return {"items": items, "next_cursor": next_cursor}


# -- PostgreSQL --------------------------------------------------------------------


def connect(database_url: str) -> psycopg.Connection[dict[str, Any]]:
    return psycopg.connect(
        database_url,
        connect_timeout=5,
        autocommit=True,
        row_factory=dict_row,
        options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c default_transaction_read_only=on",
    )


def cost_table(
    database_url: str,
    namespace: str,
    by: str,
    span: TimeRange,
    limit: int,
    *,
    use_rollup: bool | None = None,
) -> list[dict[str, Any]]:
    """Calls, priced calls and cost per model, provider, actor, tag or user of
    ``namespace`` in the range, costliest first. Unpriced calls (``cost_usd`` NULL) are
    counted beside the priced sum. A range longer than ``ROLLUP_AFTER`` is summed from the
    hourly rollup where it holds the grouping (model, provider, actor; the same figures:
    ``use_rollup`` forces either path)."""
    if use_rollup is None:
        use_rollup = span.end - span.start > ROLLUP_AFTER
    if use_rollup:
        with connect(database_url) as conn:
            found = rollup.cost_rows(
                conn, COST_GROUPS[by], namespace, span.start, span.end, limit=limit
            )
        if found is not None:
            return _cost_items(found)
    column = sql.Identifier(COST_GROUPS[by])
    query = sql.SQL(
        "SELECT {col} AS key, count(*) AS calls, count(cost_usd) AS priced_calls, "
        "sum(cost_usd) AS cost_usd, sum(prompt_tokens) AS prompt_tokens, "
        "sum(completion_tokens) AS completion_tokens FROM {source} "
        "WHERE namespace = %s AND started_at >= %s AND started_at < %s GROUP BY 1 "
        "ORDER BY coalesce(sum(cost_usd), 0) DESC, key NULLS LAST LIMIT %s"
    ).format(col=column, source=_COST_SOURCES.get(by, _CALLS))
    with connect(database_url) as conn:
        rows = conn.execute(query, (namespace, span.start, span.end, limit)).fetchall()
    return _cost_items(rows)


def _cost_items(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "key": row["key"],
            "calls": row["calls"],
            "priced_calls": row["priced_calls"],
            "unpriced_calls": row["calls"] - row["priced_calls"],
            "cost_usd": None if row["cost_usd"] is None else float(row["cost_usd"]),
            "prompt_tokens": int(row["prompt_tokens"] or 0),
            "completion_tokens": int(row["completion_tokens"] or 0),
        }
        for row in rows
    ]


def cost_series(
    database_url: str,
    namespace: str,
    by: str,
    span: TimeRange,
    *,
    use_rollup: bool | None = None,
) -> list[dict[str, Any]]:
    """Cost of ``namespace`` per step (``span.step_s``) and key, oldest first: ``t`` is
    the step's start in Unix seconds. Over more than ``ROLLUP_AFTER`` with steps of
    whole hours, summed from the hourly rollup (``use_rollup`` forces either path)."""
    if use_rollup is None:
        use_rollup = span.end - span.start > ROLLUP_AFTER
    if use_rollup:
        with connect(database_url) as conn:
            found = rollup.series_rows(
                conn, COST_GROUPS[by], namespace, span.start, span.end, step_s=span.step_s
            )
        if found is not None:
            return [_series_item(row) for row in found]
    column = sql.Identifier(COST_GROUPS[by])
    query = sql.SQL(
        "SELECT extract(epoch FROM date_bin(make_interval(secs => %s), started_at, "
        "'2000-01-01T00:00:00Z'::timestamptz))::bigint AS t, {col} AS key, "
        "count(*) AS calls, coalesce(sum(cost_usd), 0) AS cost_usd FROM {source} "
        "WHERE namespace = %s AND started_at >= %s AND started_at < %s "
        "GROUP BY 1, 2 ORDER BY 1, 2"
    ).format(col=column, source=_COST_SOURCES.get(by, _CALLS))
    with connect(database_url) as conn:
        rows = conn.execute(query, (span.step_s, namespace, span.start, span.end)).fetchall()
    return [_series_item(row) for row in rows]


def _series_item(row: dict[str, Any]) -> dict[str, Any]:
    return {"t": row["t"], "key": row["key"], "calls": row["calls"], "cost_usd": row["cost_usd"]}


def like_prefix(prefix: str) -> str:
    """A LIKE pattern matching the strings that start with ``prefix`` (its ``%``, ``_``
    and ``\\`` escaped), which ``llm_traces_plan_prefix_idx`` (byte-wise
    ``text_pattern_ops``) answers as a range of plan ids, whatever the collation."""
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"{escaped}%"


#: The fixed windows of the Overview's recent activity; "today" comes between them.
ACTIVITY_WINDOWS: Final = (("1h", timedelta(hours=1)), ("24h", timedelta(days=1)))
#: How far back a browser's start of the day may lie (a day of 25 hours, a zone of +14).
MAX_DAY_START_AGE: Final = timedelta(hours=50)


def parse_day_start(raw: str | None, now: datetime | None = None) -> tuple[datetime, str]:
    """``day_start``: the start of the reader's day as Unix seconds (the page's script
    sends the browser's local midnight), with its label; absent, UTC midnight."""
    now = now or datetime.now(UTC)
    if raw is None or raw == "":
        return datetime(now.year, now.month, now.day, tzinfo=UTC), "UTC"
    if not raw.isdigit():
        raise QueryError(f"day_start must be a Unix time in whole seconds, got {shown(raw)}")
    start = datetime.fromtimestamp(int(raw), UTC)
    if not now - MAX_DAY_START_AGE <= start <= now:
        raise QueryError(
            f"day_start must lie within the last {int(MAX_DAY_START_AGE.total_seconds() // 3600)}"
            f" hours, got {shown(raw)}"
        )
    return start, "local"


def recent_activity(
    database_url: str,
    namespace: str,
    now: datetime | None = None,
    *,
    day_start: datetime | None = None,
) -> list[dict[str, Any]]:
    """Calls of ``namespace`` stored in the last hour, today (since ``day_start``, UTC
    midnight by default) and the last 24 hours: calls per minute, priced spend,
    unpriced calls, and the share of calls that failed or were retried."""
    now = now or datetime.now(UTC)
    if day_start is None:
        day_start = parse_day_start(None, now)[0]
    windows = [(name, now - span) for name, span in ACTIVITY_WINDOWS]
    windows.insert(1, ("today", day_start))
    parts = ", ".join(
        f"count(*) FILTER (WHERE started_at >= %(s{i})s) AS calls{i}, "
        f"coalesce(sum(cost_usd) FILTER (WHERE started_at >= %(s{i})s), 0) AS cost{i}, "
        f"count(cost_usd) FILTER (WHERE started_at >= %(s{i})s) AS priced{i}, "
        f"count(error) FILTER (WHERE started_at >= %(s{i})s) AS errors{i}, "
        f"count(*) FILTER (WHERE started_at >= %(s{i})s AND retry_count > 0) AS retried{i}"
        for i in range(len(windows))
    )
    starts = {f"s{i}": start for i, (_, start) in enumerate(windows)}
    oldest = min(starts.values())
    query = (
        f"SELECT {parts} FROM llm_traces WHERE namespace = %(namespace)s "  # noqa: S608 (built from constants)
        "AND started_at >= %(oldest)s AND started_at <= %(now)s"
    )
    with connect(database_url) as conn:
        bound = {**starts, "namespace": namespace, "oldest": oldest, "now": now}
        row = conn.execute(query, bound).fetchone()
    assert row is not None
    items = []
    for i, (name, start) in enumerate(windows):
        calls = int(row[f"calls{i}"])
        minutes = max((now - start).total_seconds() / 60, 1.0)
        items.append(
            {
                "window": name,
                "from": start.isoformat(),
                "calls": calls,
                "calls_per_minute": calls / minutes,
                "cost_usd": float(row[f"cost{i}"]),
                "unpriced_calls": calls - int(row[f"priced{i}"]),
                "error_rate": int(row[f"errors{i}"]) / calls if calls else None,
                "retry_rate": int(row[f"retried{i}"]) / calls if calls else None,
            }
        )
    return items


# -- Redis -------------------------------------------------------------------------


def live_items(client: redis.Redis, keys: Keys) -> list[dict[str, Any]]:
    """Every fleet-wide live series, summed over the producers."""
    return [
        {
            "key": series.key.value,
            "type": series.key.spec.type.value,
            "unit": series.key.spec.unit,
            "labels": dict(series.labels),
            "count": series.count,
            "sum": series.sum,
            "value": series.value,
            "p50": series.p50,
            "p95": series.p95,
            "p99": series.p99,
        }
        for series in read_live(client, keys)
    ]


def overview(client: redis.Redis, keys: Keys) -> dict[str, Any]:
    """Live spend, the costliest plans, dead letters, the consumer groups' lag, the
    records the emitters dropped and the workers' readiness (:mod:`.fleet_health`)."""
    top = top_plans(client, keys, TOP_PLANS)
    shards = shard_keys(client, keys)  # dead letters and groups: each shard's own
    dead = dict.fromkeys(GROUPS, 0)
    for shard in shards:
        pipe = client.pipeline(transaction=False)
        for group in GROUPS:
            pipe.xlen(shard.dead_letters(group))
        for group, count in zip(GROUPS, pipe.execute(), strict=True):
            dead[group] += int(count)
    return {
        "namespace": keys.namespace,
        "spend_usd": total_cost_usd(client, keys),
        "top_plans": [
            {
                "plan_id": plan.plan_id,
                "cost_usd": plan.cost_usd,
                "priced_calls": plan.priced_calls,
                "decisions": plan.decisions,
                "child_plans": plan.child_plans,
                "budget_usd": plan.budget_usd,
                # Of a budget of 0 nothing can be a share: left out, like no budget.
                "share_used": plan.cost_usd / plan.budget_usd if plan.budget_usd else None,
            }
            for plan in top.plans
        ],
        "dead_letters": dead,
        "groups": [
            {
                "group": report.group,
                "stream": report.stream,
                "pending": report.pending,
                "lag": report.lag,
                "age_s": report.age_s,
            }
            for shard in shards
            for report in inspect_groups(client, shard)
        ],
        **fleet_health.emitter_figures(client, keys),
        "workers": fleet_health.workers(client, keys),
    }
