"""The worker's aggregates: the producers' counters summed once, so readers need one
round trip whatever the number of producers.

Each producer identity counts in hashes of its own (``{ns}:p:<producer>:live:*`` and
``:plan:*``), and a reader that sums them itself costs one command per producer (with
1,000 producers: 17-24 ms for a budget check, 310-400 ms for every live key). So
every worker keeps the sums in keys only it can write (``{ns}:agg:*``, outside every
producer prefix) and readers read those while the worker marks them fresh
(``Keys.aggregate_fresh``). Each producer's contribution is clamped at zero there as
in the readers' own sums (a value that is not a finite number counts as zero): no
agent can lower what another counted, it can only inflate a figure.

What changed comes from the producers themselves: each batch adds the live hashes and
plans it touched to the producer's dirty set (``Keys.dirty``, in its own prefix). Each
tick (``AGGREGATE_INTERVAL_S``) the worker reads the dirty sets of the producers it
knows (one script call), and redoes only what they name, from the producers' hashes,
never from stream entries (which a redelivery would count twice):

* a live hash of one producer: one script diffs the hash against what the aggregate
  holds of it (``Keys.aggregate_seen``), adds the clamped differences to the
  aggregate, records the new contents and removes the dirty member, atomically. Run
  twice, or by two workers, the second run finds no difference. Gauges keep each
  producer's value (``Keys.aggregate_gauges``) and the aggregate the largest.
* a plan: one script recomputes the plan's whole sum from the hashes of every
  producer that ever counted for it (``Keys.aggregate_plan_producers``), writes it
  with the longest remaining lifetime of those hashes, ranks it by cost
  (``Keys.aggregate_plan_costs``) and removes the dirty members, atomically.

After each tick the worker rebuilds the snapshot of the live series when a fold
changed them (:mod:`fleettrace_worker.serve.snapshot`), and once a minute stores the
fleet's LLM totals (:mod:`fleettrace_worker.serve.history`). A dirty member is removed only
by the script that folds its change in: a worker that dies mid-tick loses nothing. At
start a worker folds in everything once (every live hash of every known producer, every
plan hash a SCAN finds; hashes of emitters before the dirty sets too), then marks the
aggregates fresh. Whole numbers are exact below 2**53 per producer and field (the
scripts compute in doubles); readers' own sums (no worker running) are exact at any size.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

import redis

from fleettrace.cluster import refresh_topology
from fleettrace.errors import FleettraceError
from fleettrace.keys import (
    AGGREGATE_FRESH_MS,
    AGGREGATE_INTERVAL_S,
    DIRTY_LIVE,
    DIRTY_PLAN,
    PLAN_SCAN_COUNT,
    PLAN_TTL_S,
    SNAPSHOT_VERSION,
    STAT_SUM,
    Keys,
    plan_field,
    unescape_value,
)
from fleettrace.metrics import MetricKey
from fleettrace.producers import known_producers
from fleettrace.redis_errors import translate_redis_errors
from fleettrace_worker.keys import AGGREGATE_DIRTY_STEP
from fleettrace_worker.serve.history import History
from fleettrace_worker.serve.snapshot import Snapshot

log = logging.getLogger(__name__)

#: The clamping and stat rules the readers' sums apply (fleettrace.producers), in Lua:
#: a contribution is a finite decimal number (no hex), clamped at zero; whole-number
#: stats are truncated to integers; gauges ("value") keep their sign. One more bound
#: the readers' own sums do not need: a contribution counts up to 2**48 (CAP), so no
#: producer can push an aggregate past what HINCRBY/HINCRBYFLOAT accept (an error
#: halfway through a script would leave it half applied).
_COMMON_LUA: Final = r"""
local function number(s)
  if type(s) ~= 'string' or string.find(s, '[xX]') then return nil end
  local v = tonumber(s)
  if v == nil or v ~= v or v == math.huge or v == -math.huge then return nil end
  return v
end
local function kind(field)
  local stat = string.match(field, '|([^|]*)$') or field
  if stat == 'value' then return 'v' end
  if stat == 'count' or stat == 'sum.whole' or stat == 'sum.nanos'
      or string.sub(stat, 1, 3) == 'le=' or string.sub(stat, 1, 2) == 'd=' then
    return 'i'
  end
  return 'f'
end
local CAP = 281474976710656
local function contribution(k, s)
  local v = number(s)
  if v == nil then return nil end
  if v > CAP then v = CAP elseif v < -CAP then v = -CAP end
  if k == 'v' then return v end
  if v <= 0 then return 0 end
  if k == 'i' then return math.floor(v) end
  return v
end
local function hset_all(key, flat)
  for i = 1, #flat, 1000 do
    redis.call('HSET', key, unpack(flat, i, math.min(i + 999, #flat)))
  end
end
local function render(k, v)
  if k == 'i' then return string.format('%d', v) end
  return string.format('%.17g', v)
end
local function hash_of(key)
  if redis.call('TYPE', key)['ok'] ~= 'hash' then return {} end
  local flat = redis.call('HGETALL', key)
  local out = {}
  for i = 1, #flat, 2 do out[flat[i]] = flat[i + 1] end
  return out
end
local function forget(set, member)
  if redis.call('TYPE', set)['ok'] == 'set' then redis.call('SREM', set, member) end
end
"""

#: Fold one producer's live hash into the aggregate of its metric key.
#: KEYS: producer hash, seen hash, aggregate, gauges, producer dirty set, snapshot (whose
#: version field, ARGV[3], a change bumps). ARGV: producer, dirty member, that field.
#: Returns the number of fields whose part changed.
LIVE_LUA: Final = (
    _COMMON_LUA
    + r"""
local now = hash_of(KEYS[1])
local seen = hash_of(KEYS[2])
local changed, record, gauges = 0, {}, {}
for field, raw in pairs(now) do
  local k = kind(field)
  local part = contribution(k, raw)
  if part ~= nil then
    record[#record + 1] = field
    record[#record + 1] = render(k, part)
  end
  local before = number(seen[field])
  if k == 'v' then
    if part ~= before then gauges[field] = part or false end
  elseif (part or 0) ~= (before or 0) then
    local delta = (part or 0) - (before or 0)
    if k == 'i' then
      redis.call('HINCRBY', KEYS[3], field, render('i', delta))
    else
      redis.call('HINCRBYFLOAT', KEYS[3], field, render('f', delta))
    end
    changed = changed + 1
  end
  seen[field] = nil
end
for field, raw in pairs(seen) do
  local k = kind(field)
  local before = number(raw) or 0
  if k == 'v' then
    gauges[field] = false
  elseif before ~= 0 then
    if k == 'i' then
      redis.call('HINCRBY', KEYS[3], field, render('i', -before))
    else
      redis.call('HINCRBYFLOAT', KEYS[3], field, render('f', -before))
    end
    changed = changed + 1
  end
end
for field, value in pairs(gauges) do
  local mine = field .. '\n' .. ARGV[1]
  if value then
    redis.call('HSET', KEYS[4], mine, render('v', value))
  else
    redis.call('HDEL', KEYS[4], mine)
  end
  local best = nil
  local all = redis.call('HGETALL', KEYS[4])
  local head = field .. '\n'
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, #head) == head then
      local v = tonumber(all[i + 1])
      if best == nil or v > best then best = v end
    end
  end
  if best == nil then
    redis.call('HDEL', KEYS[3], field)
  else
    redis.call('HSET', KEYS[3], field, render('v', best))
  end
  changed = changed + 1
end
redis.call('DEL', KEYS[2])
hset_all(KEYS[2], record)
forget(KEYS[5], ARGV[2])
if changed > 0 then redis.call('HINCRBY', KEYS[6], ARGV[3], 1) end
return changed
"""
)

#: Recompute one plan's aggregate from every producer that counted for it.
#: KEYS: aggregate, producers set, costs zset, expiry zset, then per producer its plan
#: hash and its dirty set. ARGV: escaped plan id, cost field, dirty member, now (ms),
#: lifetime (ms) for a hash without one, then the producers (in KEYS' order).
#: Returns -1 when the producers set holds a producer the call did not name (another
#: worker added one meanwhile: call again with it), else the fields written.
PLAN_LUA: Final = (
    _COMMON_LUA
    + r"""
local n = #ARGV - 5
for i = 1, n do redis.call('SADD', KEYS[2], ARGV[5 + i]) end
if redis.call('SCARD', KEYS[2]) > n then return -1 end
local ints, floats, values, order = {}, {}, {}, {}
local ttl = -2
for i = 1, n do
  local key = KEYS[3 + 2 * i]
  for field, raw in pairs(hash_of(key)) do
    local k = kind(field)
    local part = contribution(k, raw)
    if part ~= nil then
      if ints[field] == nil and floats[field] == nil and values[field] == nil then
        order[#order + 1] = field
      end
      if k == 'i' then ints[field] = (ints[field] or 0) + part
      elseif k == 'f' then floats[field] = (floats[field] or 0) + part
      elseif values[field] == nil or part > values[field] then values[field] = part end
    end
  end
  local left = redis.call('PTTL', key)
  if left == -1 then left = tonumber(ARGV[5]) end
  if left > ttl then ttl = left end
end
for i = 1, n do forget(KEYS[4 + 2 * i], ARGV[3]) end
redis.call('DEL', KEYS[1])
if ttl <= 0 or #order == 0 then
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('ZREM', KEYS[4], ARGV[1])
  return 0
end
local flat = {}
for _, field in ipairs(order) do
  flat[#flat + 1] = field
  if ints[field] ~= nil then flat[#flat + 1] = render('i', ints[field])
  elseif floats[field] ~= nil then flat[#flat + 1] = render('f', floats[field])
  else flat[#flat + 1] = render('v', values[field]) end
end
hset_all(KEYS[1], flat)
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('ZADD', KEYS[3], floats[ARGV[2]] or 0, ARGV[1])
redis.call('ZADD', KEYS[4], tonumber(ARGV[4]) + ttl, ARGV[1])
return #order
"""
)

#: Up to ARGV[1] members of each dirty set (KEYS), one list per set.
DIRTY_LUA: Final = r"""
local out = {}
for i = 1, #KEYS do
  if redis.call('TYPE', KEYS[i])['ok'] == 'set' then
    out[i] = redis.call('SRANDMEMBER', KEYS[i], ARGV[1])
  else
    out[i] = {}
  end
end
return out
"""

#: Drop the plans whose aggregate expired (KEYS: costs, expiry; ARGV: now ms, step).
PRUNE_LUA: Final = r"""
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
if #gone > 0 then
  redis.call('ZREM', KEYS[1], unpack(gone))
  redis.call('ZREM', KEYS[2], unpack(gone))
end
return #gone
"""

_LIVE_KEYS: Final = tuple(key.value for key in MetricKey if not key.spec.per_plan)
_COST_FIELD: Final = plan_field(MetricKey.PLAN_COST_USD.value, "", STAT_SUM)
_CHUNK: Final = 500  # script calls sent per pipeline round trip


def _text(raw: bytes | str) -> str:
    return raw.decode(errors="replace") if isinstance(raw, bytes) else raw


class Aggregation:
    """The aggregation of one namespace on one Redis connection (no thread of its own:
    :class:`Aggregator` runs it, tests call its methods directly)."""

    def __init__(self, client: redis.Redis, keys: Keys, *, plan_ttl_ms: int | None = None) -> None:
        self.client = client
        self.keys = keys
        self.plan_ttl_ms = plan_ttl_ms or PLAN_TTL_S * 1000
        self._live = client.register_script(LIVE_LUA)
        self._plan = client.register_script(PLAN_LUA)
        self._dirty = client.register_script(DIRTY_LUA)
        self._prune = client.register_script(PRUNE_LUA)
        self.snapshot, self.history = Snapshot(client, keys), History(client, keys)

    def fold_everything(self, stop: threading.Event | None = None) -> bool:
        """Fold every live hash of every known producer and every plan hash a SCAN finds
        (at start: what changed while no worker ran, or before the dirty sets); False
        when ``stop`` was set before the end (a worker shutting down)."""
        with translate_redis_errors("building the aggregates"):
            producers = known_producers(self.client, self.keys)
            self._fold_live((p, k) for p in producers for k in _LIVE_KEYS)
            plans: dict[str, set[str]] = defaultdict(set)
            for raw in self.client.scan_iter(match=self.keys.plan_pattern, count=PLAN_SCAN_COUNT):
                parts = self.keys.plan_key_parts(_text(raw))
                if parts is not None:
                    plans[parts[1]].add(parts[0])
                if len(plans) >= _CHUNK:
                    self._fold_plans(plans)
                    plans = defaultdict(set)
                    if stop is not None and stop.is_set():
                        return False
            self._fold_plans(plans)
            self._refresh_snapshot()
            self.mark_fresh()
        return True

    def tick(self) -> int:
        """Fold in what the producers' dirty sets name; the number of members handled."""
        with translate_redis_errors("updating the aggregates"):
            producers = known_producers(self.client, self.keys)
            dirty_keys = [self.keys.for_producer(p).dirty for p in producers]
            found: Any = []
            if producers:
                found = self._dirty(keys=dirty_keys, args=[AGGREGATE_DIRTY_STEP])
            live: list[tuple[str, str]] = []
            plans: dict[str, set[str]] = defaultdict(set)
            junk: list[tuple[str, str]] = []
            for producer, members in zip(producers, found, strict=True):
                for raw in members:
                    member = _text(raw)
                    if member.startswith(DIRTY_LIVE) and member[2:] in _LIVE_KEYS:
                        live.append((producer, member[2:]))
                    elif member.startswith(DIRTY_PLAN) and len(member) > 2:
                        plans[member[2:]].add(producer)
                    else:
                        junk.append((producer, member))
            self._fold_live(live)
            self._fold_plans(plans)
            if junk:
                pipe = self.client.pipeline(transaction=False)
                for producer, member in junk:
                    pipe.srem(self.keys.for_producer(producer).dirty, member)
                pipe.execute(raise_on_error=False)
            self.prune()
            self._refresh_snapshot()
            self.mark_fresh()
        return len(live) + sum(len(p) for p in plans.values()) + len(junk)

    def _refresh_snapshot(self) -> None:
        """Then the minute's history sample; without a snapshot readers read the
        aggregate hashes (still marked fresh)."""
        try:
            self.snapshot.refresh()
            self.history.record_due()
        except (FleettraceError, redis.RedisError) as error:
            log.debug("snapshot or history of the live series not refreshed: %s", error)

    def mark_fresh(self) -> None:
        self.client.set(self.keys.aggregate_fresh, str(time.time()), px=AGGREGATE_FRESH_MS)

    def prune(self) -> int:
        """Drop the expired plans from the cost ranking (a step at a time)."""
        keys = [self.keys.aggregate_plan_costs, self.keys.aggregate_plan_expiry]
        return int(self._prune(keys=keys, args=[int(time.time() * 1000), _CHUNK]))

    def _fold_live(self, pairs: Iterable[tuple[str, str]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for queued, (producer, metric_key) in enumerate(pairs, start=1):
            mine = self.keys.for_producer(producer)
            keys = [
                mine.live(metric_key),
                self.keys.aggregate_seen(producer, metric_key),
                self.keys.aggregate_live(metric_key),
                self.keys.aggregate_gauges(metric_key),
                mine.dirty,
                self.keys.aggregate_snapshot,
            ]
            args = [producer, DIRTY_LIVE + metric_key, SNAPSHOT_VERSION]
            self._live(keys=keys, args=args, client=pipe)
            if queued % _CHUNK == 0:
                _execute(pipe)
        _execute(pipe)

    def _fold_plans(self, plans: dict[str, set[str]]) -> None:
        """Recompute each plan (escaped id -> producers that marked it) from all of its
        producers; a plan another worker gave a new producer meanwhile is redone."""
        pending = dict(plans)
        for _ in range(3):
            if not pending:
                return
            items = list(pending.items())
            pipe = self.client.pipeline(transaction=False)
            for plan, _producers in items:
                pipe.smembers(self.keys.aggregate_plan_producers(unescape_value(plan)))
            known = pipe.execute()
            pipe = self.client.pipeline(transaction=False)
            calls: list[str] = []
            for (plan, producers), members in zip(items, known, strict=True):
                everyone = sorted(producers | {_text(m) for m in members or ()})
                calls.append(plan)
                self._plan_call(pipe, plan, everyone)
            results = pipe.execute()
            pending = {
                plan: plans.get(plan, set())
                for plan, result in zip(calls, results, strict=True)
                if result == -1
            }
        if pending:
            log.debug("aggregates of %d plans left for the next tick", len(pending))

    def _plan_call(self, pipe: Any, plan: str, producers: Sequence[str]) -> None:
        plan_id = unescape_value(plan)
        valid = []
        for producer in producers:
            try:
                valid.append(self.keys.for_producer(producer))
            except ValueError:
                continue
        keys = [
            self.keys.aggregate_plan(plan_id),
            self.keys.aggregate_plan_producers(plan_id),
            self.keys.aggregate_plan_costs,
            self.keys.aggregate_plan_expiry,
        ]
        for mine in valid:
            keys += [mine.plan(plan_id), mine.dirty]
        args: list[str | int] = [
            plan,
            _COST_FIELD,
            DIRTY_PLAN + plan,
            int(time.time() * 1000),
            self.plan_ttl_ms,
            *(mine.producer for mine in valid),
        ]
        self._plan(keys=keys, args=args, client=pipe)


def _execute(pipe: Any) -> None:
    """Send the queued calls; one refused (a key of the wrong type) is logged, skipped."""
    for result in pipe.execute(raise_on_error=False):
        if isinstance(result, Exception):
            log.debug("aggregate not updated: %s", result)


class Aggregator:
    """Runs an :class:`Aggregation` every ``interval_s`` in a thread until ``stop``."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        stop: threading.Event,
        *,
        interval_s: float = AGGREGATE_INTERVAL_S,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self.aggregation = Aggregation(client, keys)
        #: Whether a loop of the worker reached its servers: until then the loops report
        #: what is wrong and the aggregates wait; once true, a later stall stops nothing.
        self.ready = ready
        self._waiting = True
        self.stop = stop
        self.interval_s = interval_s
        self.thread = threading.Thread(target=self._run, name="aggregates", daemon=True)
        #: Whether the first whole fold is done (readers see fresh aggregates).
        self.built = False
        self._error = ""

    def start(self) -> Aggregator:
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stop.is_set():
            if self._waiting and not self.ready():
                self.stop.wait(self.interval_s)
                continue
            self._waiting = False
            try:
                if not self.built:
                    self.built = self.aggregation.fold_everything(self.stop)
                    continue
                self.aggregation.tick()
                self._error = ""
            except (FleettraceError, redis.RedisError) as error:
                refresh_topology(self.aggregation.client)  # a cluster's master may have moved
                if str(error) != self._error:  # once per distinct error, not every tick
                    self._error = str(error)
                    log.warning("aggregates not updated: %s", error)
            self.stop.wait(self.interval_s)
