"""Reads the live counters back: what the fleet has recorded so far, per key and label set.

Every producer identity counts in hashes of its own (``{ns}:p:<producer>:live:*``);
these reads sum them over the producers of the namespace, each producer's
contribution clamped at zero (:mod:`fleettrace.producers`), so they are fleet-wide (a
budget check made by one agent sees the cost recorded by all of them) and no agent
can lower what the others counted. Per-plan series (``plan.cost_usd`` and the other
keys labelled ``plan``) live in one expiring hash per plan and producer;
:func:`plan_cost_usd` reads one plan directly, and
:mod:`fleettrace.plans` finds and ranks them. Percentiles come from each histogram's
sketch (:mod:`fleettrace.sketch`): nearest-rank, within 2 % of the exact percentile
of the recorded values, whatever their scale.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Final, overload

import orjson

from fleettrace.aggregates import Hash, live_hashes, snapshot_fields
from fleettrace.keys import (
    STAT_BUCKET_PREFIX,
    STAT_COUNT,
    STAT_SUM,
    STAT_SUM_NANOS,
    STAT_SUM_WHOLE,
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
from fleettrace.shards import shard_keys
from fleettrace.sketch import FineBucket, Sketch, exact_sum

if TYPE_CHECKING:
    import redis  # annotations only: redis-py loads when a client is made

QUANTILES = (0.5, 0.95, 0.99)


@dataclass(frozen=True, slots=True)
class LiveSeries:
    """The live figures of one metric key and one label set.

    ``buckets`` (histograms only) pairs each classic upper bound (the key's
    ``MetricSpec.buckets``, then ``inf``) with the number of observations in that
    bucket alone (not cumulative), summed exactly from the fine buckets (and from the
    ``le=`` fields of emitters older than the sketches). ``fine`` is the sketch;
    ``p50``/``p95``/``p99`` are its nearest-rank quantiles, within
    :data:`fleettrace.sketch.PROMISED_RELATIVE_ERROR` of the exact ones of the values
    it holds. ``unsketched`` counts observations in ``le=`` fields only, which the
    quantiles cannot see.
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
    fine: tuple[FineBucket, ...] = ()
    unsketched: int = 0


def _whole(text: str | None) -> int:
    """An integer Redis kept with HINCRBYFLOAT (digits, exactly; a form with an
    exponent read exactly too)."""
    if text is None:
        return 0
    try:
        return int(text)
    except ValueError:
        return int(Decimal(text))


def series_sum(stats: Mapping[str, str]) -> float:
    """A series' sum: the float ``sum`` plus the exact whole units and billionths."""
    exact = exact_sum(_whole(stats.get(STAT_SUM_WHOLE)), _whole(stats.get(STAT_SUM_NANOS)))
    legacy = stats.get(STAT_SUM)
    return exact if legacy is None else float(legacy) + exact


#: Stats of a series other than its fine buckets that carry no classic bucket.
_PLAIN_STATS: Final = (STAT_COUNT, STAT_SUM, STAT_SUM_WHOLE, STAT_SUM_NANOS, STAT_VALUE)


def _legacy_buckets(stats: Mapping[str, str]) -> dict[float, int]:
    """Classic bucket counts of ``le=`` fields (emitters before the sketches)."""
    counts: dict[float, int] = {}
    for stat, amount in stats.items():
        if stat.startswith(STAT_BUCKET_PREFIX):
            bound = float(stat[len(STAT_BUCKET_PREFIX) :].replace("+Inf", "inf"))
            counts[bound] = counts.get(bound, 0) + int(amount)
    return counts


@lru_cache(maxsize=64)
def _classic_bounds(buckets: tuple[float, ...]) -> tuple[float, ...]:
    """A key's classic bounds and +Inf, ascending (the same for every series of it)."""
    return tuple(sorted({*buckets, math.inf}))


def series_from_stats(key: MetricKey, labels: str, stats: dict[str, str]) -> LiveSeries:
    """One series from its encoded label set and its stats (stat name -> amount)."""
    spec = key.spec
    value = stats.get(STAT_VALUE)
    buckets: tuple[tuple[float, int], ...] = ()
    fine: tuple[FineBucket, ...] = ()
    quantiles: list[float | None] = [None, None, None]
    unsketched = 0
    if spec.type is MetricType.HISTOGRAM:
        sketch = Sketch.from_stats(stats, spec.buckets)
        fine = sketch.buckets
        counts = sketch.classic()
        if len(stats) - sketch.fields > sum(1 for stat in _PLAIN_STATS if stat in stats):
            legacy = _legacy_buckets(stats)  # only when there is more than the usual
            unsketched = sum(legacy.values())
            for bound, amount in legacy.items():
                counts[bound] = counts.get(bound, 0) + amount
        bounds = _classic_bounds(spec.buckets)
        if not counts.keys() <= set(bounds):  # a bound the key no longer has
            bounds = tuple(sorted({*bounds, *counts}))
        get = counts.get
        buckets = tuple([(bound, get(bound, 0)) for bound in bounds])
        quantiles = sketch.quantiles(QUANTILES)
    return LiveSeries(
        key=key,
        labels=decode_labels(labels),
        count=int(stats.get(STAT_COUNT, 0)),
        sum=series_sum(stats),
        value=float(value) if value is not None else None,
        buckets=buckets,
        p50=quantiles[0],
        p95=quantiles[1],
        p99=quantiles[2],
        fine=fine,
        unsketched=unsketched,
    )


def read_live(
    client: redis.Redis, keys: Keys | None = None, metric_key: MetricKey | str | None = None
) -> list[LiveSeries]:
    """Every live series of the namespace (or of one metric key), in the order of
    ``MetricKey`` and then of the label sets, summed over the producers (clamped at
    zero each). While a worker keeps the aggregates (at most one worker tick
    behind, :mod:`fleettrace.aggregates`): one round trip and no series to build when
    its snapshot is current (:func:`decode_snapshot`), else two (the series built
    from the aggregate hashes). Without a worker, four: the snapshot check, the
    mark, the producer set, then one pipelined HGETALL per key and producer. Without
    ``keys``, the configured namespace (``FLEETTRACE_NAMESPACE``, as the emitter uses).

    Fleet-wide series only: the per-plan keys (``MetricSpec.per_plan``) are left out,
    since there is a series per plan; asking for one of them is a ``ValueError``.
    Read plans with :func:`plan_cost_usd` or :mod:`fleettrace.plans`. Hashes of the
    layout before per-producer keys (``{ns}:live:*``) are added like one more producer.

    In a sharded namespace (:mod:`fleettrace.shards`) one ``SMEMBERS`` more finds the
    shards; each is read as above (without the snapshot when there are several) and
    the shards' fields are summed the same way.
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
        shards = shard_keys(client, keys, "reading the live counters")
        if len(shards) == 1:
            found = snapshot_fields(client, shards[0])
            if found is not None:
                ready = decode_snapshot(found)
                if ready is not None:
                    return [one for one in ready if one.key in wanted]
        groups: list[list[Hash]] = [[] for _ in wanted]
        trusted = len(shards) == 1
        for shard in shards:
            found_groups, summed = _shard_groups(client, shard, wanted)
            trusted = trusted and summed
            for index, more in enumerate(found_groups):
                groups[index] += more
    series: list[LiveSeries] = []
    for key, group in zip(wanted, groups, strict=True):
        if trusted and not group[1]:  # nothing of the previous layout to add
            series += key_series(key, group[0])
        else:
            series += key_series(key, merge_fields(group, _stat))
    return series


def _shard_groups(
    client: redis.Redis, keys: Keys, wanted: list[MetricKey]
) -> tuple[list[list[Hash]], bool]:
    """Per metric key, the hashes of one shard to sum: [the worker's aggregate, the
    legacy hash] and True while a worker keeps the aggregates, else each producer's
    hash and the legacy one, and False."""
    groups = live_hashes(client, keys, [key.value for key in wanted])
    if groups is not None:
        return groups, True
    producers = known_producers(client, keys)
    pipe = client.pipeline(transaction=False)
    for key in wanted:
        for producer in producers:
            pipe.hgetall(keys.for_producer(producer).live(key.value))
        pipe.hgetall(keys.legacy_live(key.value))  # emitters of the previous layout
    hashes = pipe.execute()
    step = len(producers) + 1
    return [hashes[i * step : (i + 1) * step] for i in range(len(wanted))], False


def key_series(
    key: MetricKey, fields: Mapping[bytes, bytes] | Mapping[str, str]
) -> list[LiveSeries]:
    """The series of one metric key from its (summed) hash fields, by label set."""
    by_labels: dict[str, dict[str, str]] = {}
    for name, amount in fields.items():
        labels, stat = split_live_field(_text(name))
        by_labels.setdefault(labels, {})[stat] = _text(amount)
    return [series_from_stats(key, labels, by_labels[labels]) for labels in sorted(by_labels)]


# -- the worker's snapshot (Keys.aggregate_snapshot) --------------------------------------
#: The snapshot's layout; a reader ignores one of another format (a newer worker's).
SNAPSHOT_FORMAT: Final = 1


def _bound_out(value: float) -> float | None:
    """JSON has no infinity: the +Inf bound travels as null."""
    return None if value == math.inf else value


def _checked(value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise ValueError(f"not a finite figure: {value!r}")
    return value


def encode_snapshot(series: Iterable[LiveSeries]) -> bytes:
    """Series as the worker stores them in its snapshot: one JSON value, every figure
    exactly (orjson writes the shortest repr that reads back as the same float). The
    classic bounds are written once per distinct set ("bounds") and each series names
    its set and lists its counts, so a reader pairs them in C (``zip``). A figure that
    is not finite is a ``ValueError``: the worker then stores no snapshot, and readers
    build the series from the aggregates."""
    bounds: dict[tuple[float, ...], int] = {}
    rows = []
    for one in series:
        own = tuple([bound for bound, _ in one.buckets])
        fine: list[float | None] = []
        for bucket in one.fine:
            fine += (bucket.sign, bucket.log_index, _bound_out(bucket.le), bucket.observations)
        rows.append(
            [
                one.key.value,
                [item for pair in one.labels for item in pair],
                one.count,
                _checked(one.sum),
                _checked(one.value),
                bounds.setdefault(own, len(bounds)),
                [count for _, count in one.buckets],
                _checked(one.p50),
                _checked(one.p95),
                _checked(one.p99),
                fine,
                one.unsketched,
            ]
        )
    table = [[_bound_out(bound) for bound in own] for own in bounds]
    return orjson.dumps({"format": SNAPSHOT_FORMAT, "bounds": table, "series": rows})


_KEYS_BY_VALUE: Final = {key.value: key for key in MetricKey}
#: A FineBucket without the Python-level __new__ of NamedTuple (as fleettrace.sketch).
_fine_bucket: Final = tuple.__new__


def decode_snapshot(payload: bytes) -> list[LiveSeries] | None:
    """The series of :func:`encode_snapshot`; None for a payload of another format or
    one that does not decode (the caller then reads the aggregates)."""
    inf = math.inf
    try:
        found = orjson.loads(payload)
        if found.get("format") != SNAPSHOT_FORMAT:
            return None
        table = [
            tuple([inf if bound is None else float(bound) for bound in own])
            for own in found["bounds"]
        ]
        out = []
        for row in found["series"]:
            key, labels, count, total, value, bounds, counts, p50, p95, p99, fine, extra = row
            pairs = iter(labels)
            out.append(
                LiveSeries(
                    _KEYS_BY_VALUE[key],
                    tuple(zip(pairs, pairs, strict=True)),
                    count,
                    float(total),
                    _float(value),
                    tuple(zip(table[bounds], counts, strict=True)),
                    _float(p50),
                    _float(p95),
                    _float(p99),
                    tuple(
                        [
                            _fine_bucket(FineBucket, (sign, index, _bound_in(le), n))
                            for sign, index, le, n in zip(*[iter(fine)] * 4, strict=True)
                        ]
                    )
                    if fine
                    else (),
                    extra,
                )
            )
        return out
    except (orjson.JSONDecodeError, AttributeError, IndexError, KeyError, TypeError, ValueError):
        return None


def _bound_in(raw: float | None) -> float:
    return math.inf if raw is None else float(raw)


def _float(raw: float | None) -> float | None:
    """A figure as the reader built it: JSON reads ``2.0`` back as ``2.0`` but a
    writer could have put ``2``; a float either way."""
    return None if raw is None else float(raw)


def _stat(name: str) -> str:
    return split_live_field(name)[1]


def _text(raw: bytes | str) -> str:
    return raw.decode(errors="replace") if isinstance(raw, bytes) else raw


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

    One round trip while a worker runs: the worker's aggregate of the plan (each
    producer's cost clamped at zero, so no agent can lower the cost others recorded;
    at most one worker tick behind, :mod:`fleettrace.aggregates`), plus the fields
    emitters of the layouts before per-producer keys wrote (``{ns}:plan:<id>``,
    ``{ns}:live:plan.cost_usd``), so the answer is whole during an upgrade. Without a
    worker, three: the producer set, then one HGET of the plan's hash per producer
    (pipelined), each clamped at zero. A plan whose counters expired (``plan_ttl_s``
    after its last record) costs 0. In a sharded namespace: one ``SMEMBERS`` more, then
    the above for each shard, summed.
    """
    keys, rest = _keys_first(args, keys)
    if len(rest) != 1 or not isinstance(rest[0], str):
        raise TypeError("plan_cost_usd() takes the client and a plan_id (and optionally keys)")
    plan_id = rest[0]
    action = "reading a plan's cost"
    with translate_redis_errors(action):
        shards = shard_keys(client, keys, action)
        return sum(_shard_plan_cost(client, shard, plan_id) for shard in shards)


def _shard_plan_cost(client: redis.Redis, keys: Keys, plan_id: str) -> float:
    """A plan's cost as one shard counted it (each producer's clamped at zero)."""
    key = MetricKey.PLAN_COST_USD.value
    field = plan_field(key, "", STAT_SUM)
    legacy_field = live_field(encode_labels(((PLAN_LABEL, plan_id),)), STAT_SUM)
    pipe = client.pipeline(transaction=False)
    pipe.exists(keys.aggregate_fresh)
    pipe.hget(keys.aggregate_plan(plan_id), field)
    # What emitters of the two layouts before per-producer keys counted.
    pipe.hget(keys.legacy_plan(plan_id), field)
    pipe.hget(keys.legacy_live(key), legacy_field)
    fresh, *costs = pipe.execute()
    if not fresh:  # no worker keeps the aggregates: sum the producers here
        pipe = client.pipeline(transaction=False)
        for producer in known_producers(client, keys):
            pipe.hget(keys.for_producer(producer).plan(plan_id), field)
        costs = [*pipe.execute(), *costs[1:]]
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
