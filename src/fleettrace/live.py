"""Reads the live counters back: what the fleet has recorded so far, per key and label set.

Every producer identity counts in hashes of its own (``{ns}:p:<producer>:live:*``);
these reads sum them over the producers of the namespace, each producer's
contribution clamped at zero (:mod:`fleettrace.producers`), so they are fleet-wide (a
budget check made by one agent sees the cost recorded by all of them) and no agent
can lower what the others counted. Per-plan series (``plan.cost_usd`` and the other
keys labelled ``plan``) live in one expiring hash per plan and producer;
:func:`plan_cost_usd` reads one plan directly, and
:mod:`fleettrace.plans` finds and ranks them. Percentiles are estimated from the
histogram buckets the way Prometheus' ``histogram_quantile`` does it (linear
interpolation inside the bucket that holds the rank), so they agree with what a dashboard shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, overload

import redis

from fleettrace.keys import (
    STAT_BUCKET_PREFIX,
    STAT_COUNT,
    STAT_SUM,
    STAT_VALUE,
    Keys,
    decode_labels,
    encode_labels,
    live_field,
    plan_field,
    split_live_field,
)
from fleettrace.metrics import PLAN_LABEL, MetricKey, MetricType
from fleettrace.producers import clamped, known_producers, merge_fields
from fleettrace.redis_errors import translate_redis_errors

QUANTILES = (0.5, 0.95, 0.99)


@dataclass(frozen=True, slots=True)
class LiveSeries:
    """The live figures of one metric key and one label set.

    ``buckets`` (histograms only) pairs each upper bound with the number of
    observations in that bucket alone (not cumulative), ascending, ``inf`` last.
    """

    key: MetricKey
    labels: tuple[tuple[str, str], ...]
    count: int
    sum: float
    value: float | None = None
    buckets: tuple[tuple[float, int], ...] = ()
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None


def histogram_quantile(q: float, buckets: tuple[tuple[float, int], ...]) -> float | None:
    """The q-quantile estimated from non-cumulative buckets; None without observations.

    A rank that falls in the overflow bucket is reported as the last finite bound,
    as Prometheus does: nothing more is known about it.
    """
    total = sum(count for _, count in buckets)
    if total == 0:
        return None
    rank = q * total
    cumulative = 0
    lower = 0.0
    for bound, count in buckets:
        if count and cumulative + count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - cumulative) / count
        cumulative += count
        lower = bound
    return lower  # pragma: no cover (rank <= total always lands in a bucket)


def series_from_stats(key: MetricKey, labels: str, stats: dict[str, str]) -> LiveSeries:
    """One series from its encoded label set and its stats (stat name -> amount)."""
    spec = key.spec
    value = stats.get(STAT_VALUE)
    buckets: tuple[tuple[float, int], ...] = ()
    quantiles: list[float | None] = [None, None, None]
    if spec.type is MetricType.HISTOGRAM:
        counts = {
            float(stat[len(STAT_BUCKET_PREFIX) :].replace("+Inf", "inf")): int(amount)
            for stat, amount in stats.items()
            if stat.startswith(STAT_BUCKET_PREFIX)
        }
        bounds = sorted({*spec.buckets, math.inf, *counts})
        buckets = tuple((bound, counts.get(bound, 0)) for bound in bounds)
        quantiles = [histogram_quantile(q, buckets) for q in QUANTILES]
    return LiveSeries(
        key=key,
        labels=decode_labels(labels),
        count=int(stats.get(STAT_COUNT, 0)),
        sum=float(stats.get(STAT_SUM, 0.0)),
        value=float(value) if value is not None else None,
        buckets=buckets,
        p50=quantiles[0],
        p95=quantiles[1],
        p99=quantiles[2],
    )


def read_live(
    client: redis.Redis, keys: Keys | None = None, metric_key: MetricKey | str | None = None
) -> list[LiveSeries]:
    """Every live series of the namespace (or of one metric key), in the order of
    ``MetricKey`` and then of the label sets, summed over the producers (clamped at
    zero each). Two round trips: the producer set, then one pipelined HGETALL per
    key and producer. Without ``keys``, the configured namespace
    (``FLEETTRACE_NAMESPACE``, as the emitter uses).

    Fleet-wide series only: the per-plan keys (``MetricSpec.per_plan``) are left out,
    since there is a series per plan; asking for one of them is a ``ValueError``.
    Read plans with :func:`plan_cost_usd` or :mod:`fleettrace.plans`. Hashes of the
    layout before per-producer keys (``{ns}:live:*``) are added like one more producer.
    """
    keys = keys if keys is not None else Keys()
    if metric_key is None:
        wanted = [key for key in MetricKey if not key.spec.per_plan]
    else:
        wanted = [MetricKey(metric_key)]
        if wanted[0].spec.per_plan:
            raise ValueError(
                f"{wanted[0].value} is counted per plan: read it with "
                "fleettrace.plans.read_plan() or top_plans()"
            )
    with translate_redis_errors("reading the live counters"):
        producers = known_producers(client, keys)
        pipe = client.pipeline(transaction=False)
        for key in wanted:
            for producer in producers:
                pipe.hgetall(keys.for_producer(producer).live(key.value))
            pipe.hgetall(keys.legacy_live(key.value))  # emitters of the previous layout
        hashes = pipe.execute()
    series: list[LiveSeries] = []
    step = len(producers) + 1
    for index, key in enumerate(wanted):
        fields = merge_fields(hashes[index * step : (index + 1) * step], _stat)
        by_labels: dict[str, dict[str, str]] = {}
        for name, amount in fields.items():
            labels, stat = split_live_field(name)
            by_labels.setdefault(labels, {})[stat] = amount
        series.extend(
            series_from_stats(key, labels, by_labels[labels]) for labels in sorted(by_labels)
        )
    return series


def _stat(name: str) -> str:
    return split_live_field(name)[1]


def _keys_first(args: tuple[Any, ...], keys: Keys | None) -> tuple[Keys, tuple[Any, ...]]:
    """Accept both ``f(client, keys, plan_id, ...)`` and ``f(client, plan_id, ...,
    keys=None)``; without keys, the configured namespace."""
    if args and isinstance(args[0], Keys):
        if keys is not None:
            raise TypeError("keys given twice")
        return args[0], args[1:]
    return (keys if keys is not None else Keys()), args


@overload
def plan_cost_usd(client: redis.Redis, plan_id: str, /, *, keys: Keys | None = None) -> float: ...
@overload
def plan_cost_usd(client: redis.Redis, keys: Keys, plan_id: str, /) -> float: ...
def plan_cost_usd(client: redis.Redis, *args: Any, keys: Keys | None = None) -> float:
    """The priced LLM cost the whole fleet has recorded for a plan so far.

    ``plan_cost_usd(client, "plan-42")`` reads the configured namespace;
    ``keys=Keys("other")`` (or ``Keys`` as the second argument) another one.

    Two round trips, whatever the number of plans: the producer set, then one HGET
    of the plan's hash per producer (pipelined), each clamped at zero, so no agent can
    lower the cost others recorded; plus the fields emitters of the layouts before
    per-producer keys wrote (``{ns}:plan:<id>``, ``{ns}:live:plan.cost_usd``), so the
    answer is whole during an upgrade. A plan whose counters expired (``plan_ttl_s``
    after its last record) costs 0.
    """
    keys, rest = _keys_first(args, keys)
    if len(rest) != 1 or not isinstance(rest[0], str):
        raise TypeError("plan_cost_usd() takes the client and a plan_id (and optionally keys)")
    plan_id = rest[0]
    key = MetricKey.PLAN_COST_USD.value
    field = plan_field(key, "", STAT_SUM)
    with translate_redis_errors("reading a plan's cost"):
        producers = known_producers(client, keys)
        pipe = client.pipeline(transaction=False)
        for producer in producers:
            pipe.hget(keys.for_producer(producer).plan(plan_id), field)
        # What emitters of the two layouts before per-producer keys counted.
        pipe.hget(keys.legacy_plan(plan_id), field)
        pipe.hget(
            keys.legacy_live(key), live_field(encode_labels(((PLAN_LABEL, plan_id),)), STAT_SUM)
        )
        costs = pipe.execute()
    return sum(clamped(cost) for cost in costs)


@overload
def is_over_budget(
    client: redis.Redis, plan_id: str, /, budget_usd: float, *, keys: Keys | None = None
) -> bool: ...
@overload
def is_over_budget(client: redis.Redis, keys: Keys, plan_id: str, /, budget_usd: float) -> bool: ...
def is_over_budget(
    client: redis.Redis, *args: Any, budget_usd: float | None = None, keys: Keys | None = None
) -> bool:
    """Whether the plan has cost more than ``budget_usd``, counted across every process
    and host of the namespace. Unpriced calls (unknown models) add nothing.

    ``is_over_budget(client, "plan-42", budget_usd=5.0)`` reads the configured
    namespace (``FLEETTRACE_NAMESPACE``); ``keys=`` or ``Keys`` as the second
    argument reads another one.
    """
    keys, rest = _keys_first(args, keys)
    given = list(rest)
    if budget_usd is None and len(given) == 2:
        budget_usd = given.pop()
    if len(given) != 1 or budget_usd is None:
        raise TypeError("is_over_budget() takes the client, a plan_id and budget_usd")
    return plan_cost_usd(client, given[0], keys=keys) > budget_usd
