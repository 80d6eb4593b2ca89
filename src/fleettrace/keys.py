"""The key layout: every Redis key name fleettrace uses, and the field names agents
write, in one place.

Names only the worker uses (its consumer groups, the fields of a dead letter, the
pace of its walks) are in ``fleettrace_worker/keys.py``; the keys they live under
(``{ns}:dlq:<group>``, ``{ns}:worker:<consumer>``) are built here.

All keys of one namespace share the Redis Cluster hash tag ``{namespace}``, so the
trace stream, the live counters and the idempotency state that one batch touches
live in the same slot and one function call can update them atomically.

Each producer identity (the Redis user an emitter connects as, or a configured
producer id) writes only keys under its own prefix ``{ns}:p:<producer>:``, so an ACL
line ``~{ns}:p:<user>:*`` gives an agent nothing of anyone else's (docs/security.md).
Readers sum each counter over the producers the worker has seen, clamping each
producer's contribution at zero. Layout for namespace ``fleettrace``::

    {fleettrace}:p:<producer>:traces            stream  batches of LLMTrace records
    {fleettrace}:p:<producer>:metrics           stream  batches of metric samples
    {fleettrace}:p:<producer>:live:<metric key> hash    live counters of one of the 17
                                                        metric keys, except the
                                                        per-plan ones (next line)
    {fleettrace}:p:<producer>:plan:<plan id>    hash    one plan's live counters as
                                                        this producer counted them
                                                        (expires; see Keys.plan)
    {fleettrace}:p:<producer>:emitter           hash    emitter figures (dropped
                                                        records, batches)
    {fleettrace}:p:<producer>:emitters:<id>     string  last batch number applied for
                                                        one emitter (expires
                                                        EMITTER_SEQ_TTL_S after its last)
    {fleettrace}:p:<producer>:dirty             set     what this producer's batches
                                                        changed since the worker last
                                                        folded them in: "l:<metric key>"
                                                        and "p:<escaped plan id>"
    {fleettrace}:producers                      set     producers the worker found
                                                        (written by the worker only)
    {fleettrace}:agg:*                          ...     the worker's aggregates of the
                                                        producers' counters, which
                                                        readers read in one round trip
                                                        (see Keys.aggregate_fresh;
                                                        written by the worker only)
    {fleettrace}:dlq:persist                    stream  dead letters of the persist group
    {fleettrace}:dlq:langsmith                  stream  dead letters of the langsmith group
    {fleettrace}:dlq:otlp                       stream  dead letters of the otlp group
    {fleettrace}:worker:<consumer>              string  a worker's health snapshot (expires)
    {fleettrace}:traces, {fleettrace}:metrics   stream  the layout before per-producer
                                                        keys; the worker reads them
                                                        while they exist (upgrades)
    {fleettrace}:live:*, {fleettrace}:plan:*    hash    counters of that layout; readers
                                                        add them (clamped) while they
                                                        exist, agents cannot write them

With ``FLEETTRACE_SHARDS`` above 1 a namespace is split into shards
(:mod:`fleettrace.shards`): shard 0 is the layout above, shard ``s`` > 0 the same
layout under the tag ``{fleettrace:s}`` (``Keys.shard``), each in its own slot;
``{fleettrace}:shards`` (a set, written by the worker only) names the shards found.

The batch function library is named LIBRARY_NAME, its function APPLY_FUNCTION.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from fleettrace.environment import NAMESPACE_VARIABLE, PRODUCER_VARIABLE, first_set

DEFAULT_NAMESPACE: Final = "fleettrace"

#: How long an emitter's idempotency key (its last applied batch number) outlives its
#: last batch: a batch re-sent later than this (after a day of retries) would be applied
#: twice; an emitter idle longer starts from an empty key. About 100 bytes per emitter
#: alive in this window (docs/reliability.md).
EMITTER_SEQ_TTL_S: Final = 24 * 3600
#: Largest stream entry the emitter writes, in bytes (field names and values): the
#: emitter splits batches by size to stay under it; the worker dead-letters an entry
#: whose data field (``d``) is above it before decoding it, bounding its memory.
MAX_ENTRY_BYTES: Final = 4 * 1024 * 1024

# Field names of a batch entry (see codec.py for their meaning).
FIELD_VERSION: Final = b"v"
FIELD_KIND: Final = b"k"
FIELD_BATCH_ID: Final = b"b"
FIELD_COUNT: Final = b"n"
FIELD_DATA: Final = b"d"

# Fields of the emitter's figures hash.
EMITTER_DROPPED: Final = "dropped"
EMITTER_BATCHES: Final = "batches"
EMITTER_RECORDS: Final = "records"

_NAMESPACE_RE: Final = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")

#: The producer identity of an emitter connected as Redis's default user (no ACLs).
DEFAULT_PRODUCER: Final = "default"
#: Shards a namespace may have (``FLEETTRACE_SHARDS``); shard numbers are below it.
MAX_SHARDS: Final = 1024
#: What a producer identity may hold: it is part of key names and of SCAN MATCH and
#: ACL key patterns, so no glob character, no ':' and no brace.
_PRODUCER_RE: Final = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
PRODUCER_KEY_PART: Final = "p"
#: The Redis function library that applies a batch (Redis 7+), and its function. The
#: version in the function's name changes whenever its arguments or meaning change,
#: so an emitter never calls a function that means something else.
LIBRARY_NAME: Final = "fleettrace"
APPLY_FUNCTION: Final = "fleettrace_apply_v2"
#: The function names of earlier releases the library still answers to (the same
#: body: their calls never use the op kinds added since), so emitters of the previous
#: release keep working while a fleet upgrades.
EARLIER_FUNCTIONS: Final = ("fleettrace_apply_v1",)
#: Members of a producer's dirty set: a live hash or a plan its batches changed.
DIRTY_LIVE: Final = "l:"
DIRTY_PLAN: Final = "p:"
#: Seconds between two aggregation ticks of a worker: the most the aggregates lag
#: behind the producers' hashes while a worker runs (plus the tick's own time).
AGGREGATE_INTERVAL_S: Final = 0.5
#: Lifetime of Keys.aggregate_fresh after a tick: this long after the last worker
#: stopped, readers go back to summing the producers' hashes themselves.
AGGREGATE_FRESH_MS: Final = 5000
#: Keys.aggregate_snapshot: its lifetime, the most a worker waits to rebuild it, its fields.
SNAPSHOT_TTL_MS: Final = 10_000
SNAPSHOT_REFRESH_MS: Final = 5_000
SNAPSHOT_VERSION, SNAPSHOT_BUILT, SNAPSHOT_SERIES = "version", "built", "series"


def check_producer(producer: str) -> str:
    """``producer`` when it is a valid producer identity; ``ValueError`` saying why not."""
    if not isinstance(producer, str) or not _PRODUCER_RE.match(producer):
        raise ValueError(
            f"producer identity {producer!r} must be 1-64 characters of letters, digits, "
            f"'_', '.' or '-'; set {PRODUCER_VARIABLE} (or EmitterSettings.producer) to one"
        )
    return producer


def configured_producer(environ: Mapping[str, str] | None = None) -> str | None:
    """``FLEETTRACE_PRODUCER`` when set and not blank, else None (the Redis user)."""
    return first_set((PRODUCER_VARIABLE,), environ)


def configured_namespace(environ: Mapping[str, str] | None = None) -> str:
    """The namespace this process is configured for: ``FLEETTRACE_NAMESPACE`` when it
    is set and not blank, else ``fleettrace``. The one place every part (emitter,
    live reads, ``Keys()``, the CLI) takes its default namespace from."""
    return first_set((NAMESPACE_VARIABLE,), environ) or DEFAULT_NAMESPACE


@dataclass(frozen=True, slots=True)
class Keys:
    """The key layout of one namespace, seen as one producer; build it once, pass it around.

    ``Keys()`` without a namespace is the configured one (:func:`configured_namespace`),
    so code that reads what the process's emitter writes finds the same keys. The
    per-producer keys (streams, counters, idempotency keys, figures) are those of
    ``producer`` (``default`` unless given): :meth:`for_producer` gives another one's.
    Namespace-wide keys (dead letters, health, the producer set) do not depend on it.
    """

    namespace: str = dataclasses.field(default_factory=configured_namespace)
    producer: str = DEFAULT_PRODUCER
    #: The shard whose keys these are (docs/scaling.md); 0 is the unsharded layout.
    shard: int = 0

    def __post_init__(self) -> None:
        if not _NAMESPACE_RE.match(self.namespace):
            raise ValueError(
                f"namespace {self.namespace!r} must be 1-64 characters of "
                "letters, digits, '_', '.' or '-'"
            )
        check_producer(self.producer)
        if type(self.shard) is not int or not 0 <= self.shard < MAX_SHARDS:
            raise ValueError(f"shard must be a whole number 0-{MAX_SHARDS - 1}, got {self.shard!r}")

    def for_producer(self, producer: str) -> Keys:
        """The same namespace and shard as seen by ``producer``."""
        return Keys(self.namespace, producer, self.shard)

    def for_shard(self, shard: int) -> Keys:
        """The same namespace and producer in ``shard``."""
        return Keys(self.namespace, self.producer, shard)

    @property
    def prefix(self) -> str:
        """The hash tag of the shard: ``{ns}`` for shard 0, ``{ns:s}`` for shard s."""
        if self.shard:
            return f"{{{self.namespace}:{self.shard}}}"
        return "{" + self.namespace + "}"

    @property
    def shard_registry(self) -> str:
        """Set of the shards the worker found (written by the worker only), in shard 0."""
        return "{" + self.namespace + "}:shards"

    @property
    def producer_prefix(self) -> str:
        """``{ns}:p:<producer>``: every key this producer writes starts with it."""
        return f"{self.prefix}:{PRODUCER_KEY_PART}:{self.producer}"

    @property
    def traces(self) -> str:
        return f"{self.producer_prefix}:traces"

    @property
    def metrics(self) -> str:
        return f"{self.producer_prefix}:metrics"

    @property
    def streams(self) -> tuple[str, str]:
        """This producer's two streams."""
        return (self.traces, self.metrics)

    @property
    def stream_patterns(self) -> tuple[str, str]:
        """SCAN MATCH patterns of every producer's trace and metric streams."""
        base = f"{self.prefix}:{PRODUCER_KEY_PART}:*"
        return (f"{base}:traces", f"{base}:metrics")

    @property
    def legacy_streams(self) -> tuple[str, str]:
        """The streams of the layout before per-producer keys (read during upgrades)."""
        return (f"{self.prefix}:traces", f"{self.prefix}:metrics")

    def producer_of(self, stream: str) -> str | None:
        """The producer whose stream ``stream`` is; None for a legacy stream or a key
        of no producer. Taken from the key name only, never from what it holds."""
        head = f"{self.prefix}:{PRODUCER_KEY_PART}:"
        if not stream.startswith(head):
            return None
        producer, sep, rest = stream[len(head) :].partition(":")
        if not sep or rest not in ("traces", "metrics") or not _PRODUCER_RE.match(producer):
            return None
        return producer

    def is_stream(self, stream: str) -> bool:
        """Whether ``stream`` is an input stream of this namespace (any producer's or legacy)."""
        return stream in self.legacy_streams or self.producer_of(stream) is not None

    @property
    def producers(self) -> str:
        """The set of producers the worker has found (only the worker writes it)."""
        return f"{self.prefix}:producers"

    @property
    def dirty(self) -> str:
        """The set of what this producer's batches changed (members DIRTY_LIVE + metric
        key, DIRTY_PLAN + escaped plan id), which the worker folds into the aggregates
        and empties; written by the producer's own batches."""
        return f"{self.producer_prefix}:dirty"

    # -- the worker's aggregates (docs/reference/observability.md#aggregates) ----------
    # Outside every producer prefix, so no agent line grants a write on them.

    @property
    def aggregate_fresh(self) -> str:
        """Set by a running worker after each aggregation tick, expiring
        AGGREGATE_FRESH_MS later: while it exists, readers read the aggregates; without
        it (no worker running) they sum the producers' hashes themselves."""
        return f"{self.prefix}:agg:fresh"

    @property
    def aggregate_snapshot(self) -> str:
        """Hash: the fleet's live series built from the aggregates, in one value, and the
        aggregates' version it was built from (fleettrace.snapshot)."""
        return f"{self.prefix}:agg:snapshot"

    @property
    def aggregate_history(self) -> str:
        """Sorted set: the fleet's cumulative LLM totals once a minute (score: the
        minute, Unix seconds), the last 25 hours (fleettrace_worker.serve.history)."""
        return f"{self.prefix}:agg:history"

    def aggregate_live(self, metric_key: str) -> str:
        """One metric key's live hash summed over the producers (clamped at zero each)."""
        return f"{self.prefix}:agg:live:{metric_key}"

    def aggregate_seen(self, producer: str, metric_key: str) -> str:
        """What the aggregate of ``metric_key`` holds of ``producer``'s hash (its clamped
        fields), so the worker adds only the difference when the hash changes."""
        return f"{self.prefix}:agg:seen:{check_producer(producer)}:{metric_key}"

    def aggregate_gauges(self, metric_key: str) -> str:
        """Each producer's gauge values of ``metric_key`` (field ``<field>\n<producer>``),
        from which the aggregate keeps the largest."""
        return f"{self.prefix}:agg:gauges:{metric_key}"

    def aggregate_plan(self, plan_id: str) -> str:
        """One plan's counters summed over the producers that counted for it (clamped at
        zero each), expiring with the last of their hashes."""
        return f"{self.prefix}:agg:{PLAN_KEY_PART}:{escape_value(plan_id)}"

    def aggregate_plan_producers(self, plan_id: str) -> str:
        """The producers that counted for a plan (the worker learns them from their
        dirty sets), expiring with the plan's aggregate."""
        return f"{self.prefix}:agg:plan-producers:{escape_value(plan_id)}"

    @property
    def aggregate_plan_costs(self) -> str:
        """Sorted set: escaped plan id -> its aggregate cost, for rankings and counts."""
        return f"{self.prefix}:agg:plan-costs"

    @property
    def aggregate_plan_expiry(self) -> str:
        """Sorted set: escaped plan id -> when its aggregate expires (ms since the epoch),
        so the worker drops expired plans from AGGREGATE_PLAN_COSTS."""
        return f"{self.prefix}:agg:plan-expiry"

    def plan_key_parts(self, key: str) -> tuple[str, str] | None:
        """(producer, escaped plan id) of a producer's plan hash name; None otherwise."""
        head = f"{self.prefix}:{PRODUCER_KEY_PART}:"
        if not key.startswith(head):
            return None
        producer, _, rest = key[len(head) :].partition(":")
        part, sep, plan = rest.partition(":")
        if not sep or part != PLAN_KEY_PART or not _PRODUCER_RE.match(producer) or not plan:
            return None
        return producer, plan

    def dead_letters(self, group: str) -> str:
        return f"{self.prefix}:dlq:{group}"

    def live(self, metric_key: str) -> str:
        return f"{self.producer_prefix}:live:{metric_key}"

    def legacy_live(self, metric_key: str) -> str:
        """A live hash of the layout before per-producer keys (``--migrate-plans``)."""
        return f"{self.prefix}:live:{metric_key}"

    def legacy_plan(self, plan_id: str) -> str:
        """A plan hash of the layout before per-producer keys, ``{ns}:plan:<plan id>``,
        which readers still add while emitters of that release run (upgrades)."""
        return f"{self.prefix}:{PLAN_KEY_PART}:{escape_value(plan_id)}"

    def emitter_seq(self, emitter_id: str) -> str:
        """The idempotency key of one emitter of this producer."""
        return f"{self.producer_prefix}:emitters:{emitter_id}"

    @property
    def emitter_seq_pattern(self) -> str:
        return f"{self.producer_prefix}:emitters:*"

    @property
    def emitter(self) -> str:
        return f"{self.producer_prefix}:emitter"

    def worker_health(self, consumer: str) -> str:
        return f"{self.prefix}:worker:{consumer}"

    def plan(self, plan_id: str) -> str:
        """The hash of one plan's live counters as this producer counted them,
        ``{ns}:p:<producer>:plan:<plan id>``.

        Every metric whose labels include ``plan`` (plan.cost_usd, plan.decisions_count,
        plan.child_plans_count, plan.budget_usd) is counted in a hash of its own per
        plan, the id escaped like a label value (``%``, ``,``, ``=``, ``|`` as ``%25``,
        ``%2C``, ``%3D``, ``%7C``), rather than as fields of the live hashes: Redis 7.0
        has no per-field expiry, and a field per plan in a shared hash never went away
        (50,000 plans left 14.9 MB for good). Each batch that writes a plan's hash also sets its
        EXPIRE to the emitter setting ``plan_ttl_s`` (default PLAN_TTL_S), so a plan's
        counters vanish that long after its last record.

        Fields: ``<metric key>|<label set>|<stat>``, label set and stat as in the live
        hashes but without the plan label, which the key already names (it would repeat
        the plan id in every field): ``plan.cost_usd||sum`` in the hash of plan p-42.
        A plan's figures are the sum over producers of their hashes, each producer's
        contribution clamped at zero. Readers find the plans with ``SCAN MATCH
        {ns}:p:*:plan:*`` in steps of PLAN_SCAN_COUNT, examining at most PLAN_SCAN_CAP
        keys per read; one plan is one HGETALL per known producer, pipelined.
        """
        return f"{self.producer_prefix}:{PLAN_KEY_PART}:{escape_value(plan_id)}"

    @property
    def plan_pattern(self) -> str:
        """SCAN MATCH pattern of every plan hash of the namespace, all producers."""
        return f"{self.prefix}:{PRODUCER_KEY_PART}:*:{PLAN_KEY_PART}:*"

    def plan_prefix_pattern(self, plan_prefix: str) -> str:
        """SCAN MATCH pattern of the plan hashes (all producers) whose plan id starts
        with ``plan_prefix``."""
        escaped = glob_escape(escape_value(plan_prefix))
        return f"{self.prefix}:{PRODUCER_KEY_PART}:*:{PLAN_KEY_PART}:{escaped}*"

    def plan_of(self, key: str) -> str | None:
        """The (escaped) plan id of a plan hash's name, whichever its producer."""
        head = f"{self.prefix}:{PRODUCER_KEY_PART}:"
        if not key.startswith(head):
            return None
        producer, _, rest = key[len(head) :].partition(":")
        part, sep, plan = rest.partition(":")
        if not sep or part != PLAN_KEY_PART or not producer:
            return None
        return plan


# Fields of a live counter hash: "<label set>|<stat>", where the label set is
# "name=value,name=value" in the metric's declared label order, with '%', ',', '='
# and '|' in values percent-escaped. Stats: "count"; "sum" (a float, HINCRBYFLOAT: the
# trace-derived sums and what emitters before exact sums wrote); "sum.whole" and
# "sum.nanos" (a metric sample's exact sum as whole units and billionths, both
# integers added with HINCRBYFLOAT; the sum is sum + sum.whole + sum.nanos / 1e9);
# "value" (gauges); for
# histograms "d=<bucket>/<le>", one field per populated fine bucket of the sketch (see
# fleettrace.sketch). "le=<bound>" fields (classic buckets, non-cumulative, "le=+Inf"
# the overflow) are what emitters before the sketches wrote: readers still add them to
# the classic buckets and the count, but not to the quantiles.
STAT_COUNT: Final = "count"
STAT_SUM: Final = "sum"
STAT_SUM_WHOLE: Final = "sum.whole"
STAT_SUM_NANOS: Final = "sum.nanos"
STAT_VALUE: Final = "value"
STAT_BUCKET_PREFIX: Final = "le="
STAT_FINE_PREFIX: Final = "d="
LABEL_SEPARATOR: Final = ","
STAT_SEPARATOR: Final = "|"

_ESCAPES: Final = {"%": "%25", ",": "%2C", "=": "%3D", "|": "%7C"}
_UNESCAPE_RE: Final = re.compile("%(25|2C|3D|7C)")
_UNESCAPES: Final = {v[1:]: k for k, v in _ESCAPES.items()}


def encode_labels(labels: tuple[tuple[str, str], ...]) -> str:
    """Render a label set so that any value survives the trip through a hash field."""
    return LABEL_SEPARATOR.join(
        f"{name}={''.join(_ESCAPES.get(ch, ch) for ch in value)}" for name, value in labels
    )


def decode_labels(text: str) -> tuple[tuple[str, str], ...]:
    """Inverse of :func:`encode_labels`."""
    if not text:
        return ()
    pairs = []
    for part in text.split(LABEL_SEPARATOR):
        name, _, value = part.partition("=")
        pairs.append((name, _UNESCAPE_RE.sub(lambda m: _UNESCAPES[m.group(1)], value)))
    return tuple(pairs)


def live_field(labels: str, stat: str) -> str:
    """The hash field of one statistic of one label set (labels already encoded)."""
    return f"{labels}{STAT_SEPARATOR}{stat}"


def bucket_stat(bound: float) -> str:
    """The stat name of the histogram bucket whose upper bound is ``bound``."""
    return f"{STAT_BUCKET_PREFIX}{'+Inf' if bound == float('inf') else repr(float(bound))}"


def split_live_field(field: str) -> tuple[str, str]:
    """Split a hash field into (encoded label set, stat)."""
    labels, _, stat = field.rpartition(STAT_SEPARATOR)
    return labels, stat


# -- Per-plan counters (layout: the docstring of Keys.plan) ------------------------------

PLAN_KEY_PART: Final = "plan"
#: Default lifetime of a plan's counters after the last batch that wrote them.
PLAN_TTL_S: Final = 7 * 24 * 3600
PLAN_SCAN_COUNT: Final = 1000  # COUNT of each SCAN step over the plan hashes
#: Most plan hashes one read examines (past it the read says it stopped early).
PLAN_SCAN_CAP: Final = 1_000_000
#: Old-layout fields moved per script call by ``--migrate-plans`` (each ~30 us of Redis).
LEGACY_MOVE_STEP: Final = 200


_ESCAPE_TABLE: Final = str.maketrans(_ESCAPES)


def escape_value(value: str) -> str:
    """A label value (or plan id) with '%', ',', '=' and '|' percent-escaped."""
    return value.translate(_ESCAPE_TABLE)


def unescape_value(text: str) -> str:
    """Inverse of :func:`escape_value`: the plan id of a plan hash's name suffix."""
    return _UNESCAPE_RE.sub(lambda m: _UNESCAPES[m.group(1)], text)


_GLOB_SPECIAL_RE: Final = re.compile(r"([*?\[\]\\])")


def glob_escape(text: str) -> str:
    """``text`` as a literal inside a SCAN MATCH pattern."""
    return _GLOB_SPECIAL_RE.sub(r"\\\1", text)


def plan_field(metric_key: str, labels: str, stat: str) -> str:
    """The field of a plan hash: metric key, encoded label set (without ``plan``), stat."""
    return f"{metric_key}{STAT_SEPARATOR}{labels}{STAT_SEPARATOR}{stat}"


def split_plan_field(field: str) -> tuple[str, str, str]:
    """Split a plan hash field into (metric key, encoded label set, stat)."""
    metric_key, _, rest = field.partition(STAT_SEPARATOR)
    labels, stat = split_live_field(rest)
    return metric_key, labels, stat
