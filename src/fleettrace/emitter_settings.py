"""How an emitter is configured (:class:`EmitterSettings`) and what it reports
(:class:`EmitterStats`); kept apart from the sender so each module stays readable."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Final, Literal

from fleettrace.cluster_settings import DEFAULT_WAIT_TIMEOUT_MS, ReplicaWait, parse_flag
from fleettrace.connection import DEFAULT_REDIS_URL
from fleettrace.environment import REDIS_CLUSTER_VARIABLE, redact_url
from fleettrace.errors import ConfigurationError
from fleettrace.keys import (
    DEFAULT_NAMESPACE,
    PLAN_TTL_S,
    Keys,
    check_producer,
    configured_namespace,
)
from fleettrace.price_overrides import prices_path_from_env
from fleettrace.shards import choose_shard, parse_shard, parse_shards

Overflow = Literal["drop_oldest", "block"]

#: What one buffered record is estimated to hold in memory, for ``max_buffer_bytes``:
#: a record a hook captured (a tuple of references to what the scope already holds,
#: its own numbers and its fields dict), and a prebuilt pydantic record given to
#: ``record()``. Measured on CPython 3.11 (``python -m benchmarks.load --only
#: memory``, docs/performance.md), rounded up.
CAPTURED_RECORD_BYTES: Final = 450
MODEL_RECORD_BYTES: Final = 2_500


def buffer_bytes(records: int, models: int) -> int:
    """The estimated memory of a buffer of ``records`` records, ``models`` of them
    prebuilt pydantic records (the rest captured by hooks)."""
    return records * CAPTURED_RECORD_BYTES + models * (MODEL_RECORD_BYTES - CAPTURED_RECORD_BYTES)


_OVERFLOW_POLICIES: Final = ("drop_oldest", "block")


@dataclass(frozen=True, slots=True, repr=False)
class EmitterSettings:
    """How an emitter connects, batches, buffers and retries.

    The repr hides the password of ``redis_url``, so settings can be logged.
    """

    redis_url: str = DEFAULT_REDIS_URL
    #: Defaults to ``FLEETTRACE_NAMESPACE`` (else ``fleettrace``), as ``Keys()`` does.
    namespace: str = field(default_factory=configured_namespace)
    #: Largest batch (one script call, at most one stream entry per kind). A batch
    #: whose encoded records would make an entry over ``keys.MAX_ENTRY_BYTES`` is sent
    #: as several calls, each under it.
    max_batch_records: int = 1000
    #: A partial batch is sent after at most this long. Short, because it is the floor
    #: of every record's freshness; under load batches fill to ``max_batch_records``
    #: before it runs out (docs/performance.md: 5 ms instead of 50 ms took the p50 of
    #: row committed - record created at 5,000 records/s from about 40 to 8 ms).
    flush_interval_s: float = 0.005
    #: Records held in memory while Redis is slow or away; beyond it ``overflow`` applies.
    #: While it cannot send, the sender also holds the one batch it took (at most
    #: ``max_batch_records``, counted as buffered in the stats).
    max_buffer_records: int = 100_000
    #: The same bound in bytes of memory, estimated per record (``CAPTURED_RECORD_BYTES``
    #: for a record a hook made, ``MODEL_RECORD_BYTES`` for one given to ``record()``);
    #: None: only ``max_buffer_records`` bounds the buffer. Whichever is reached first
    #: applies ``overflow``.
    max_buffer_bytes: int | None = None
    overflow: Overflow = "drop_oldest"
    #: With ``overflow="block"``: how long a caller waits for room before its record drops.
    block_timeout_s: float = 0.1
    retry_initial_s: float = 0.05
    retry_max_s: float = 5.0
    socket_timeout_s: float = 5.0
    #: How long interpreter exit may wait for the buffer to drain.
    exit_timeout_s: float = 5.0
    #: A plan's live counters expire this many seconds after the last batch that
    #: wrote them (whole seconds: Redis EXPIRE).
    plan_ttl_s: int = PLAN_TTL_S
    #: A TOML or JSON file of custom prices (:mod:`fleettrace.price_overrides`), read
    #: once when the emitter is made; defaults to ``FLEETTRACE_PRICES``.
    prices_file: str | None = field(default_factory=prices_path_from_env)
    #: The producer identity whose keys this emitter writes (``{ns}:p:<producer>:*``).
    #: None: the Redis user the emitter connects as (``ACL WHOAMI``), which is what the
    #: documented agent ACL line expects; ``from_env`` reads ``FLEETTRACE_PRODUCER``.
    producer: str | None = None
    #: ``redis_url`` is a seed node of a Redis Cluster (``FLEETTRACE_REDIS_CLUSTER``).
    redis_cluster: bool = False
    #: Replicas that must hold a batch before it counts as sent (``WAIT``); None is
    #: auto: one on a cluster whose master has a replica (docs/scaling.md).
    wait_replicas: int | None = None
    wait_timeout_ms: int = DEFAULT_WAIT_TIMEOUT_MS
    #: Shards of the namespace (``FLEETTRACE_SHARDS``) and the one this emitter writes
    #: to (``FLEETTRACE_SHARD``); None: chosen by :func:`fleettrace.shards.choose_shard`.
    shards: int = 1
    shard: int | None = None

    def __post_init__(self) -> None:
        self.replica_wait()
        try:
            Keys(self.namespace)
            if self.producer is not None:
                check_producer(self.producer)
            parse_shards(self.shards, "shards")
            parse_shard(self.shard, "shard")
        except ValueError as error:
            raise ConfigurationError(str(error)) from None
        if self.overflow not in _OVERFLOW_POLICIES:
            raise ConfigurationError(
                f"overflow must be 'drop_oldest' or 'block', got {self.overflow!r}"
            )
        for name in ("max_batch_records", "max_buffer_records", "plan_ttl_s"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
        bound = self.max_buffer_bytes
        if bound is not None and (type(bound) is not int or bound < MODEL_RECORD_BYTES):
            raise ConfigurationError(
                f"max_buffer_bytes must be None or a whole number of bytes of at least "
                f"{MODEL_RECORD_BYTES} (one record), got {bound!r}"
            )
        for name in (
            "flush_interval_s",
            "block_timeout_s",
            "retry_initial_s",
            "retry_max_s",
            "socket_timeout_s",
            "exit_timeout_s",
        ):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ConfigurationError(
                    f"{name} must be a positive number of seconds, got {value!r}"
                )

    def replica_wait(self) -> ReplicaWait:
        """What each batch waits for after it is applied."""
        return ReplicaWait(self.wait_replicas, self.wait_timeout_ms)

    def chosen_shard(self) -> int:
        """The shard this emitter writes to (docs/scaling.md: the shard-choice rule)."""
        return choose_shard(self.shards, self.shard)

    def __repr__(self) -> str:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["redis_url"] = redact_url(self.redis_url)
        shown = ", ".join(f"{name}={value!r}" for name, value in values.items())
        return f"EmitterSettings({shown})"

    @classmethod
    def from_env(cls, **overrides: Any) -> EmitterSettings:
        """Settings from the environment (:class:`~fleettrace.settings.AgentSettings`):
        the URL, namespace and producer from ``FLEETTRACE_REDIS_URL`` (then
        ``REDIS_URL``), ``FLEETTRACE_NAMESPACE`` and ``FLEETTRACE_PRODUCER``, the
        tuning from ``FLEETTRACE_EMITTER_<NAME>``; an override that is not None wins."""
        # pydantic-settings loads here, with the first settings read, not with the hooks.
        from fleettrace.settings import AgentSettings  # noqa: PLC0415

        env = AgentSettings.read()
        overrides = {name: value for name, value in overrides.items() if value is not None}
        for name, value in env.emitter.given().items():
            overrides.setdefault(name, value)
        overrides.setdefault("redis_url", env.redis_url or DEFAULT_REDIS_URL)
        overrides.setdefault("namespace", env.namespace or DEFAULT_NAMESPACE)
        overrides.setdefault("producer", env.producer)
        if env.prices_file is not None:
            overrides.setdefault("prices_file", env.prices_file)
        if env.redis_cluster is not None:
            overrides.setdefault(
                "redis_cluster", parse_flag(REDIS_CLUSTER_VARIABLE, env.redis_cluster)
            )
        try:
            overrides.setdefault("shards", parse_shards(env.shards))
            overrides.setdefault("shard", parse_shard(env.shard))
        except ValueError as error:
            raise ConfigurationError(str(error)) from None
        wait = ReplicaWait.parse(env.wait_replicas, env.wait_timeout_ms)
        overrides.setdefault("wait_replicas", wait.replicas)
        overrides.setdefault("wait_timeout_ms", wait.timeout_ms)
        try:
            return cls(**overrides)
        except TypeError as error:
            raise ConfigurationError(f"unknown emitter setting: {error}") from None


@dataclass(frozen=True, slots=True)
class EmitterStats:
    """A snapshot of what an emitter has done in this process.

    Every accepted record is in exactly one of ``sent`` (applied in Redis),
    ``dropped`` (given up, counted and logged) and ``buffered`` (waiting in the
    buffer or in the batch the sender has in hand), so at any moment
    ``accepted == sent + dropped + buffered``. ``accepted`` counts every record
    handed to ``record()`` or ``observe()`` that was valid, including one the block
    policy refused at the door for want of room (it is also in ``dropped``).
    ``send_failures`` counts failed script calls (Redis away, a refusal such as
    WRONGTYPE or NOPERM, an unexpected error), ``last_error`` says the last one.
    ``rejected`` counts, by reason, the attribute values (tags, metadata, ids, time to
    first token) a hook dropped as invalid while recording the rest
    (:mod:`fleettrace.attributes`).
    """

    accepted: int
    sent: int
    dropped: int
    batches: int
    buffered: int
    send_failures: int
    last_error: str | None
    rejected: dict[str, int] = field(default_factory=dict)
