"""Names only the worker uses: its consumer groups, the fields of a dead letter, and
the figures that pace its walks over Redis.

The key LAYOUT stays in one place, ``fleettrace/keys.py`` (``Keys``: every key
name, the dead-letter streams ``{ns}:dlq:<group>`` and the health key
``{ns}:worker:<consumer>`` included), because agents and readers build the same
names; what is here never appears in an agent's process.
"""

from __future__ import annotations

from typing import Final

#: The consumer groups (each has its own position in the streams and its own
#: dead-letter stream, ``Keys.dead_letters(group)``).
PERSIST_GROUP: Final = "persist"
LANGSMITH_GROUP: Final = "langsmith"
OTLP_GROUP: Final = "otlp"
GROUPS: Final = (PERSIST_GROUP, LANGSMITH_GROUP, OTLP_GROUP)

#: How long a worker's health snapshot (``Keys.worker_health``) outlives the worker's
#: last heartbeat.
WORKER_HEALTH_TTL_S: Final = 60

# Fields of a dead-letter entry (see stream/deadletter.py). An entry-level dead letter
# keeps every original field under DEAD_ORIGINAL_PREFIX + its name.
DEAD_REASON: Final = b"reason"
DEAD_STREAM: Final = b"stream"
DEAD_ENTRY_ID: Final = b"entry"
DEAD_CONSUMER: Final = b"consumer"
DEAD_BATCH_ID: Final = b"batch"
DEAD_KIND: Final = b"kind"
DEAD_POSITION: Final = b"position"
DEAD_RECORD: Final = b"record"
DEAD_ORIGINAL_PREFIX: Final = b"f:"

#: Seconds between two steps of a running consumer's walk for producer streams...
DISCOVER_INTERVAL_S: Final = 1.0
#: ...and SCAN steps per go (each examines DISCOVER_SCAN_COUNT keys, about 1 ms of
#: Redis time per 1,000 keys): a consumer spends at most about 10 ms a second on it.
DISCOVER_STEPS: Final = 10
#: COUNT of each step of the worker's SCAN for producer streams.
DISCOVER_SCAN_COUNT: Final = 1000
#: Most dirty members the worker takes from one producer per tick (a producer that
#: fills its set with junk delays only its own figures).
AGGREGATE_DIRTY_STEP: Final = 1000
#: Most plans the worker's /metrics may export with a ``plan`` label (``--metrics-plans``).
METRICS_PLANS_MAX: Final = 1000
