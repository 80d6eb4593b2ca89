"""Every Redis key, stream, group and field name fleettrace uses, in one place.

All keys of one namespace share the Redis Cluster hash tag ``{namespace}``, so the
trace stream, the live counters and the idempotency markers that one batch touches
live in the same slot and one Lua script can update them atomically.

Layout for namespace ``fleettrace``::

    {fleettrace}:traces              stream   batches of LLMTrace records
    {fleettrace}:metrics             stream   batches of metric samples
    {fleettrace}:dlq:persist         stream   dead letters of the persist group
    {fleettrace}:dlq:langsmith       stream   dead letters of the langsmith group
    {fleettrace}:live:<metric key>   hash     live counters of one of the 14 metric keys
    {fleettrace}:applied:<batch id>  string   marks a batch as applied (expires)
    {fleettrace}:emitter             hash     emitter figures (dropped records, batches)
    {fleettrace}:worker:<consumer>   string   a worker's health snapshot (expires)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

DEFAULT_NAMESPACE: Final = "fleettrace"
#: The environment variable that names the namespace (read at the edges only).
NAMESPACE_VARIABLE: Final = "FLEETTRACE_NAMESPACE"

PERSIST_GROUP: Final = "persist"
LANGSMITH_GROUP: Final = "langsmith"
GROUPS: Final = (PERSIST_GROUP, LANGSMITH_GROUP)

#: How long the marker of an applied batch lives. A batch re-sent later than this
#: (an emitter that kept retrying for a day) would be applied twice.
APPLIED_MARKER_TTL_S: Final = 24 * 3600
#: How long a worker's health snapshot outlives the worker's last heartbeat.
WORKER_HEALTH_TTL_S: Final = 60

# Field names of a batch entry (see codec.py for their meaning).
FIELD_VERSION: Final = b"v"
FIELD_KIND: Final = b"k"
FIELD_BATCH_ID: Final = b"b"
FIELD_COUNT: Final = b"n"
FIELD_DATA: Final = b"d"
#: Largest data field (``d``) of one stream entry, in bytes. The worker dead-letters a
#: larger entry by its size before decoding it, so one entry cannot take its memory.
MAX_ENTRY_BYTES: Final = 4 * 1024 * 1024

# Fields of a dead-letter entry (see fleettrace_worker/deadletter.py). An entry-level
# dead letter keeps every original field under DEAD_ORIGINAL_PREFIX + its name.
DEAD_REASON: Final = b"reason"
DEAD_STREAM: Final = b"stream"
DEAD_ENTRY_ID: Final = b"entry"
DEAD_CONSUMER: Final = b"consumer"
DEAD_BATCH_ID: Final = b"batch"
DEAD_KIND: Final = b"kind"
DEAD_POSITION: Final = b"position"
DEAD_RECORD: Final = b"record"
DEAD_ORIGINAL_PREFIX: Final = b"f:"

# Fields of the emitter's figures hash.
EMITTER_DROPPED: Final = "dropped"
EMITTER_BATCHES: Final = "batches"
EMITTER_RECORDS: Final = "records"

_NAMESPACE_RE: Final = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


@dataclass(frozen=True, slots=True)
class Keys:
    """The key layout of one namespace; build it once and pass it around."""

    namespace: str = DEFAULT_NAMESPACE

    def __post_init__(self) -> None:
        if not _NAMESPACE_RE.match(self.namespace):
            raise ValueError(
                f"namespace {self.namespace!r} must be 1-64 characters of "
                "letters, digits, '_', '.' or '-'"
            )

    @property
    def prefix(self) -> str:
        return "{" + self.namespace + "}"

    @property
    def traces(self) -> str:
        return f"{self.prefix}:traces"

    @property
    def metrics(self) -> str:
        return f"{self.prefix}:metrics"

    @property
    def streams(self) -> tuple[str, str]:
        return (self.traces, self.metrics)

    def dead_letters(self, group: str) -> str:
        return f"{self.prefix}:dlq:{group}"

    def live(self, metric_key: str) -> str:
        return f"{self.prefix}:live:{metric_key}"

    @property
    def live_pattern(self) -> str:
        return f"{self.prefix}:live:*"

    def applied(self, batch_id: str) -> str:
        return f"{self.prefix}:applied:{batch_id}"

    @property
    def emitter(self) -> str:
        return f"{self.prefix}:emitter"

    def worker_health(self, consumer: str) -> str:
        return f"{self.prefix}:worker:{consumer}"

    @property
    def worker_health_pattern(self) -> str:
        return f"{self.prefix}:worker:*"


# Fields of a live counter hash: "<label set>|<stat>", where the label set is
# "name=value,name=value" in the metric's declared label order, with '%', ',', '='
# and '|' in values percent-escaped. Stats: "count", "sum", "value" (gauges), and
# "le=<bound>" for histogram buckets (non-cumulative; "le=+Inf" is the overflow).
STAT_COUNT: Final = "count"
STAT_SUM: Final = "sum"
STAT_VALUE: Final = "value"
STAT_BUCKET_PREFIX: Final = "le="
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
