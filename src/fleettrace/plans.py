"""Reads the per-plan live counters: one plan, the costliest plans, how many there are.

Each plan's counters are one expiring hash per producer that counted for it
(``{ns}:p:<producer>:plan:<plan id>``, see :meth:`fleettrace.keys.Keys.plan`), so a
fleet that has run a million plans holds only the plans of the last ``plan_ttl_s``.
A plan's figures are the producers' hashes summed field by field, each producer's
contribution clamped at zero (:mod:`fleettrace.producers`): no agent can lower what
others counted. Reading one plan is one pipelined HGETALL per known producer.
Reading many walks the keyspace with ``SCAN MATCH {ns}:p:*:plan:*`` in steps of
``PLAN_SCAN_COUNT`` (never ``KEYS``, which blocks Redis for the whole walk) and
examines at most ``PLAN_SCAN_CAP`` plan hashes; a result says whether it stopped
early. A ranking keeps one running cost per plan id met (memory grows with the plans,
at most the cap). ``SCAN`` may return a key twice while Redis resizes its table:
counts and costs are then approximate, rankings are deduplicated.

This module also moves the per-plan fields that emitters older than the per-plan
hashes left in the ``{ns}:live:plan.*`` hashes into the per-plan hashes of the
given ``Keys``' producer
(:func:`migrate_legacy_plan_fields`), atomically per step, so nothing is counted
twice or lost even while old emitters still write.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from fleettrace.aggregates import Hash, aggregated_plans, plan_hashes, ranked_plans
from fleettrace.cluster import slot_scan
from fleettrace.keys import (
    LEGACY_MOVE_STEP,
    PLAN_SCAN_CAP,
    PLAN_SCAN_COUNT,
    PLAN_TTL_S,
    STAT_COUNT,
    STAT_SUM,
    STAT_VALUE,
    Keys,
    decode_labels,
    encode_labels,
    plan_field,
    split_live_field,
    split_plan_field,
    unescape_value,
)
from fleettrace.live import LiveSeries, series_from_stats
from fleettrace.metrics import PER_PLAN_KEYS, PLAN_LABEL, MetricKey
from fleettrace.producers import clamped, known_producers, merge_fields
from fleettrace.redis_errors import translate_redis_errors
from fleettrace.shards import shard_keys

if TYPE_CHECKING:
    import redis  # annotations only: redis-py loads when a client is made

_COST: Final = MetricKey.PLAN_COST_USD.value
_DECISIONS: Final = MetricKey.PLAN_DECISIONS_COUNT.value
_CHILDREN: Final = MetricKey.PLAN_CHILD_PLANS_COUNT.value
_BUDGET: Final = MetricKey.PLAN_BUDGET_USD.value


@dataclass(frozen=True, slots=True)
class PlanFigures:
    """What the fleet has counted for one plan."""

    plan_id: str
    #: Priced LLM cost (``plan.cost_usd`` sum) and the priced calls behind it.
    cost_usd: float
    priced_calls: int
    #: ``plan.decisions_count`` and ``plan.child_plans_count`` sums.
    decisions: int
    child_plans: int
    #: Every series of the plan, in ``MetricKey`` order.
    series: tuple[LiveSeries, ...]
    #: ``plan.budget_usd``: the budget the plan was given, None when none was.
    budget_usd: float | None = None


@dataclass(frozen=True, slots=True)
class PlanScan:
    """The result of a read over many plans."""

    plans: list[PlanFigures]
    #: Plan hashes examined.
    examined: int
    #: False when the read stopped at its cap before the walk was done.
    complete: bool


def _text(raw: bytes | str) -> str:
    return raw.decode(errors="replace") if isinstance(raw, bytes) else raw


def figures(plan_id: str, fields: Mapping[bytes, bytes] | Mapping[str, str]) -> PlanFigures:
    """A plan's figures and series from the fields of its hash (or of its producers'
    hashes merged by :func:`fleettrace.producers.merge_fields`)."""
    stats: dict[tuple[str, str], dict[str, str]] = {}
    for raw_field, raw_amount in fields.items():
        metric_key, labels, stat = split_plan_field(_text(raw_field))
        stats.setdefault((metric_key, labels), {})[stat] = _text(raw_amount)
    plan_pair = (PLAN_LABEL, plan_id)
    series: list[LiveSeries] = []
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    budget: float | None = None
    order = {key.value: i for i, key in enumerate(MetricKey)}
    known = sorted((k for k in stats if k[0] in order), key=lambda k: (order[k[0]], k[1]))
    for metric_key, labels in known:
        key = MetricKey(metric_key)
        others = dict(decode_labels(labels))
        full = tuple(
            plan_pair if name == PLAN_LABEL else (name, others.get(name, ""))
            for name in key.spec.labels
        )
        one = series_from_stats(key, encode_labels(full), stats[(metric_key, labels)])
        series.append(one)
        if metric_key == _BUDGET:
            budget = one.value
        sums[metric_key] = sums.get(metric_key, 0.0) + one.sum
        counts[metric_key] = counts.get(metric_key, 0) + one.count
    return PlanFigures(
        plan_id=plan_id,
        cost_usd=sums.get(_COST, 0.0),
        priced_calls=counts.get(_COST, 0),
        decisions=int(sums.get(_DECISIONS, 0.0)),
        child_plans=int(sums.get(_CHILDREN, 0.0)),
        series=tuple(series),
        budget_usd=budget,
    )


def read_plan(client: redis.Redis, keys: Keys, plan_id: str) -> PlanFigures | None:
    """One plan's counters summed over the producers (clamped at zero each): the
    producer set, then one pipelined HGETALL per producer. None when it has none
    (never seen, or expired)."""
    with translate_redis_errors("reading a plan's counters"):
        shards = shard_keys(client, keys, "reading a plan's counters")
        hashes = [one for shard in shards for one in _plan_hashes(client, shard, plan_id)]
    merged = merge_fields(hashes, _stat)
    return figures(plan_id, merged) if merged else None


def _plan_hashes(client: redis.Redis, keys: Keys, plan_id: str) -> list[Hash]:
    """The hashes of one plan in one shard to sum: the worker's aggregate and the legacy
    hash (one round trip while a worker runs), else each producer's and the legacy one."""
    hashes = plan_hashes(client, keys, plan_id)
    if hashes is not None:
        return hashes
    producers = known_producers(client, keys)
    pipe = client.pipeline(transaction=False)
    for producer in producers:
        pipe.hgetall(keys.for_producer(producer).plan(plan_id))
    pipe.hgetall(keys.legacy_plan(plan_id))  # emitters of the previous layout
    return list(pipe.execute())


def _stat(name: str) -> str:
    return split_plan_field(name)[2]


def _walk(
    client: redis.Redis, keys: Keys, prefix: str, cap: int, count: int
) -> Iterator[list[bytes | str]]:
    """SCAN steps over the plan hashes, each a list of key names, at most ``cap`` keys
    in all; the caller learns the walk stopped early from the sum of the lengths."""
    match = keys.plan_prefix_pattern(prefix) if prefix else keys.plan_pattern
    cursor, seen = 0, 0
    while True:
        # On a cluster: the master of the namespace's slot, where every plan hash is.
        cursor, step = slot_scan(client, keys.producers, cursor, match=match, count=count)
        step = step[: cap - seen]
        seen += len(step)
        if step:
            yield step
        if cursor == 0 or seen >= cap:
            return


def count_plans(
    client: redis.Redis,
    keys: Keys,
    *,
    cap: int = PLAN_SCAN_CAP,
    count: int = PLAN_SCAN_COUNT,
) -> tuple[int, bool]:
    """(plans holding live counters, at most ``cap``; whether that is all of them).
    ``cap`` bounds the plan hashes examined (one per plan and producer); while a
    worker keeps the aggregates, one round trip counts them all."""
    with translate_redis_errors("counting the live plans"):
        shards = shard_keys(client, keys, "counting the live plans")
        if len(shards) == 1:
            ranked = ranked_plans(client, shards[0], 1)
            if ranked is not None:
                return min(ranked[1], cap), ranked[1] <= cap
        plans: set[str] = set()
        examined = 0
        for shard in shards:  # a plan counted in several shards is one plan
            for step in _walk(client, shard, "", cap + 1 - examined, count):
                examined += len(step)
                plans.update(p for p in (shard.plan_of(_text(k)) for k in step) if p is not None)
    return min(len(plans), cap), examined <= cap


#: The cost field (ARGV[1]) of each plan hash of a SCAN step, in one call: a pipeline
#: of one HGET per plan spent most of its time in redis-py packing commands (50,000
#: plans: 0.8 s against 0.2 s). '' stands for none.
STEP_COSTS_LUA: Final = """
local costs = {}
for i = 1, #KEYS do
  costs[i] = redis.call('HGET', KEYS[i], ARGV[1]) or ''
end
return costs
"""
_COST_FIELD: Final = plan_field(_COST, "", STAT_SUM)


def _costs(
    client: redis.Redis, keys: Keys, prefix: str, cap: int, count: int
) -> Iterator[list[tuple[str, float]]]:
    """(plan id, one producer's clamped cost) of the plan hashes, a SCAN step at a
    time, each step two round trips (the SCAN, then one script call reading every
    cost of the step)."""
    script = client.register_script(STEP_COSTS_LUA)
    for step in _walk(client, keys, prefix, cap, count):
        costs = script(keys=step, args=[_COST_FIELD], client=client)
        found = []
        for key, raw in zip(step, costs, strict=True):
            plan = keys.plan_of(_text(key))
            if plan is not None:
                found.append((unescape_value(plan), clamped(raw or None)))
        yield found


def total_cost_usd(
    client: redis.Redis,
    keys: Keys,
    *,
    prefix: str = "",
    cap: int = PLAN_SCAN_CAP,
    count: int = PLAN_SCAN_COUNT,
) -> float:
    """The summed cost of the live plans whose id starts with ``prefix`` (a bounded
    walk: at most ``cap`` plans)."""
    with translate_redis_errors("reading the live plans"):
        total, left = 0.0, cap
        for shard in shard_keys(client, keys, "reading the live plans"):
            for step in _costs(client, shard, prefix, left, count):
                total += sum(cost for _, cost in step)
                left -= len(step)
            if left <= 0:
                break
        return total


def top_plans(
    client: redis.Redis,
    keys: Keys,
    limit: int,
    *,
    prefix: str = "",
    cap: int = PLAN_SCAN_CAP,
    count: int = PLAN_SCAN_COUNT,
) -> PlanScan:
    """The ``limit`` plans with the highest cost, costliest first (ties by plan id).

    While a worker keeps the aggregates (and without ``prefix``), two round trips
    whatever the number of plans: the worker's cost ranking, then the winners'
    aggregates. Otherwise a walk: each SCAN step costs one more round trip, a script
    reading each plan's cost; only the winners are read whole at the end. ``prefix``
    keeps the plans whose id starts with it. Past ``cap`` plans the ranking is of the
    first ``cap`` the walk met.
    """
    if limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    with translate_redis_errors("reading the live plans"):
        shards = shard_keys(client, keys, "reading the live plans")
        if not prefix and len(shards) == 1:
            found = _top_aggregated(client, shards[0], limit)
            if found is not None:
                return found
    costs: dict[str, float] = {}
    examined, complete = 0, True
    with translate_redis_errors("reading the live plans"):
        for shard in shards:
            for step in _costs(client, shard, prefix, cap + 1 - examined, count):
                kept = step[: cap - examined]
                complete = complete and len(kept) == len(step)  # one plan hash past the cap
                examined += len(kept)
                for plan_id, cost in kept:
                    costs[plan_id] = costs.get(plan_id, 0.0) + cost
        ranked = sorted(costs.items(), key=lambda item: (-item[1], item[0]))[:limit]
        whole = [_all_producers(client, shards, plan_id) for plan_id, _ in ranked]
    plans = []
    for (plan_id, _), hashes in zip(ranked, whole, strict=True):
        merged = merge_fields(hashes, _stat)
        if merged:  # not expired between the two reads
            plans.append(figures(plan_id, merged))
    return PlanScan(plans=plans, examined=examined, complete=complete)


def _all_producers(client: redis.Redis, shards: list[Keys], plan_id: str) -> list[Hash]:
    """Every producer's hash of a plan, in every shard (one pipeline per shard)."""
    found: list[Hash] = []
    for shard in shards:
        pipe = client.pipeline(transaction=False)
        for producer in known_producers(client, shard):
            pipe.hgetall(shard.for_producer(producer).plan(plan_id))
        found += pipe.execute()
    return found


def _top_aggregated(client: redis.Redis, keys: Keys, limit: int) -> PlanScan | None:
    """The ranking from the worker's aggregates (two round trips: the ranked ids and
    their counts, then their hashes); None when no worker keeps them."""
    ranked = ranked_plans(client, keys, limit)
    if ranked is None:
        return None
    plan_ids, total = ranked
    plans = []
    for plan_id, fields in zip(plan_ids, aggregated_plans(client, keys, plan_ids), strict=True):
        merged = merge_fields([fields], _stat)
        if merged:  # not expired between the two reads
            plans.append(figures(plan_id, merged))
    plans.sort(key=lambda plan: (-plan.cost_usd, plan.plan_id))
    return PlanScan(plans=plans, examined=total, complete=True)


# -- the key layout before per-plan hashes ----------------------------------------------

#: Moves fields of one legacy live hash (KEYS[1]) into plan hashes (KEYS[2..]) and
#: deletes them, in one atomic step: an old emitter's increment lands either before
#: (and moves) or after (and stays for the next run), never in between.
#: ARGV: TTL, then fours of (old field, plan key index, new field, "i"|"f"|"s").
MOVE_LEGACY_LUA: Final = """
local moved = 0
for i = 2, #ARGV, 4 do
  local amount = redis.call('HGET', KEYS[1], ARGV[i])
  if amount then
    local key = KEYS[tonumber(ARGV[i + 1])]
    local op = ARGV[i + 3]
    if op == 'i' then
      redis.call('HINCRBY', key, ARGV[i + 2], amount)
    elseif op == 'f' then
      redis.call('HINCRBYFLOAT', key, ARGV[i + 2], amount)
    else
      redis.call('HSET', key, ARGV[i + 2], amount)
    end
    redis.call('HDEL', KEYS[1], ARGV[i])
    moved = moved + 1
  end
end
for k = 2, #KEYS do
  redis.call('EXPIRE', KEYS[k], ARGV[1])
end
return moved
"""

_OPS: Final = {STAT_COUNT: "i", STAT_SUM: "f", STAT_VALUE: "s"}


def legacy_plan_fields(client: redis.Redis, keys: Keys) -> int:
    """How many per-plan fields old emitters left in the ``{ns}:live:plan.*`` hashes."""
    with translate_redis_errors("reading the live counters"):
        pipe = client.pipeline(transaction=False)
        for key in PER_PLAN_KEYS:
            pipe.hlen(keys.legacy_live(key.value))
        return sum(int(n) for n in pipe.execute())


def migrate_legacy_plan_fields(
    client: redis.Redis,
    keys: Keys,
    *,
    ttl_s: int = PLAN_TTL_S,
    count: int = LEGACY_MOVE_STEP,
) -> int:
    """Move every per-plan field of the ``{ns}:live:plan.*`` hashes into the plans' own
    hashes (adding to what new emitters counted there) and return how many moved.

    Safe to run at any time and more than once: each HSCAN step is one atomic script.
    A moved plan expires ``ttl_s`` after the move.
    """
    script = client.register_script(MOVE_LEGACY_LUA)
    moved = 0
    with translate_redis_errors("moving the per-plan counters"):
        for metric_key in PER_PLAN_KEYS:
            legacy = keys.legacy_live(metric_key.value)
            cursor = 0
            while True:
                cursor, fields = client.hscan(legacy, cursor, count=count)
                if fields:
                    moved += _move(
                        script, keys, legacy, metric_key.value, fields=list(fields), ttl_s=ttl_s
                    )
                if cursor == 0:
                    break
    return moved


def _move(
    script: redis.commands.core.Script,
    keys: Keys,
    legacy: str,
    metric_key: str,
    *,
    fields: list[bytes | str],
    ttl_s: int,
) -> int:
    plan_keys: dict[str, int] = {}
    args: list[str | int] = [ttl_s]
    for raw in fields:
        old = _text(raw)
        labels, stat = split_live_field(old)
        pairs = decode_labels(labels)
        plan_id = dict(pairs).get(PLAN_LABEL)
        op = "i" if stat.startswith("le=") else _OPS.get(stat)
        if plan_id is None or op is None:
            continue  # not a field this code wrote: leave it
        key = keys.plan(plan_id)
        index = plan_keys.setdefault(key, len(plan_keys) + 2)
        others = encode_labels(tuple(pair for pair in pairs if pair[0] != PLAN_LABEL))
        args += (old, index, plan_field(metric_key, others, stat), op)
    if not plan_keys:
        return 0
    return int(script(keys=[legacy, *plan_keys], args=args))
