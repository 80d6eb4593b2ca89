"""The Plans page's search: which plans, by id prefix, tag, user, status (failed or
not), cost range and time range, and the figures of each.

The conditions on the calls (namespace, time range, tag, user) are the shared
:class:`~fleettrace_worker.store.trace_filter.TraceFilter` and its SQL, the one the CLI's
``traces list/cost --tag/--user`` uses; what is per plan (status, cost range) is a
``HAVING`` over the plan's selected calls. So a plan's figures are those of its calls the
filters select: with ``tag=x`` a plan shows the calls tagged ``x``.

Every value is checked before anything reads with it (:class:`QueryError`, a 400 with
one line); every value reaches the SQL as a bound parameter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

from psycopg import sql

from fleettrace_worker.serve.dashboard import queries
from fleettrace_worker.serve.dashboard.queries import QueryError, TimeRange
from fleettrace_worker.store.trace_filter import TraceFilter, sql_conditions, where_clause

#: ``status=``: every plan, the plans with a failed call, the plans without one.
STATUSES: Final = {"any": "", "error": "count(error) > 0", "ok": "count(error) = 0"}
#: The query-string names of the search, in the order the form shows them.
SEARCH_FIELDS: Final = ("q", "tag", "user", "status", "min_cost", "max_cost")


@dataclass(frozen=True, slots=True)
class PlanSearch:
    """What ``/plans`` and ``/api/plans`` were asked for, checked."""

    namespace: str
    span: TimeRange
    prefix: str = ""
    tag: str | None = None
    user: str | None = None
    status: str = "any"
    min_cost: float | None = None
    max_cost: float | None = None

    def given(self) -> dict[str, str]:
        """The search as query-string values (for links that keep it), empty ones left out."""
        values = {
            "q": self.prefix,
            "tag": self.tag or "",
            "user": self.user or "",
            "status": "" if self.status == "any" else self.status,
            "min_cost": _text(self.min_cost),
            "max_cost": _text(self.max_cost),
        }
        if self.span.label == "custom":
            values |= {"from": self.span.start.isoformat(), "to": self.span.end.isoformat()}
        elif self.span.label != "90d":
            values["range"] = self.span.label
        return {name: value for name, value in values.items() if value}


def _text(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def _cost(name: str, raw: str | None) -> float | None:
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise QueryError(
            f"{name} must be a cost in USD, a number of 0 or more, got {queries.shown(raw)}"
        )
    return value


def parse_search(given: dict[str, str], namespace: str) -> PlanSearch:
    """The search of a query string (``range`` defaults to 90 days); QueryError (400)
    naming the first value that does not fit."""
    queries.check_lengths(given)
    for name in ("q", "tag", "user"):
        if "\x00" in given.get(name, ""):
            # PostgreSQL text cannot hold NUL: no plan could match, and the server
            # would refuse the parameter.
            raise QueryError(f"{name} must not contain a NUL character")
    span = queries.parse_range(given, default="90d")
    status = queries.parse_choice("status", given.get("status"), STATUSES, "any")
    low = _cost("min_cost", given.get("min_cost"))
    high = _cost("max_cost", given.get("max_cost"))
    if low is not None and high is not None and low > high:
        raise QueryError("min_cost must not be more than max_cost (the cost range is reversed)")
    return PlanSearch(
        namespace,
        span,
        prefix=given.get("q", ""),
        tag=given.get("tag") or None,
        user=given.get("user") or None,
        status=status,
        min_cost=low,
        max_cost=high,
    )


def search_plans(
    database_url: str, search: PlanSearch, *, after: str | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the plans ``search`` selects, by plan id from after ``after``: calls,
    priced and unpriced calls, cost (None when none was priced), tokens, failed calls,
    first and last call; and the cursor of the next page (None on the last)."""
    where = TraceFilter(
        namespace=search.namespace,
        since=search.span.start,
        until=search.span.end,
        tags=(search.tag,) if search.tag else (),
        user_id=search.user,
    )
    conditions, params = sql_conditions(where)
    conditions += [
        sql.SQL("plan_id IS NOT NULL"),
        sql.SQL("plan_id LIKE %s"),
        sql.SQL("(%s::text IS NULL OR plan_id > %s)"),
    ]
    params += [queries.like_prefix(search.prefix), after, after]
    having: list[sql.Composable] = []
    if STATUSES[search.status]:
        having.append(sql.SQL(STATUSES[search.status]))  # a constant of this module
    for bound, operator in ((search.min_cost, ">="), (search.max_cost, "<=")):
        if bound is not None:
            having.append(sql.SQL("coalesce(sum(cost_usd), 0) {} %s").format(sql.SQL(operator)))
            params.append(bound)
    query = sql.SQL(
        "SELECT plan_id, count(*) AS calls, count(cost_usd) AS priced_calls, "
        "sum(cost_usd) AS cost_usd, count(error) AS errors, "
        "sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens, "
        "min(started_at) AS first_call, max(started_at) AS last_call "
        "FROM llm_traces {where} GROUP BY plan_id {having} ORDER BY plan_id LIMIT %s"
    ).format(
        where=where_clause(conditions),
        having=sql.SQL("HAVING ") + sql.SQL(" AND ").join(having) if having else sql.SQL(""),
    )
    with queries.connect(database_url) as conn:
        rows = conn.execute(query, (*params, limit + 1)).fetchall()
    items = [
        {
            "plan_id": row["plan_id"],
            "calls": row["calls"],
            "priced_calls": row["priced_calls"],
            "unpriced_calls": row["calls"] - row["priced_calls"],
            "cost_usd": None if row["cost_usd"] is None else float(row["cost_usd"]),
            "prompt_tokens": int(row["prompt_tokens"] or 0),
            "completion_tokens": int(row["completion_tokens"] or 0),
            "errors": row["errors"],
            "first_call": row["first_call"].isoformat(),
            "last_call": row["last_call"].isoformat(),
        }
        for row in rows[:limit]
    ]
    more = len(rows) > limit
    return items, queries.encode_cursor(items[-1]["plan_id"]) if more else None
