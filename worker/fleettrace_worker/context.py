"""What a worker is told and what its group loops are built from.

:class:`WorkerSettings` is what a worker runs with, built at the edge (the CLI) from
arguments and the environment (read once, by :mod:`fleettrace_worker.settings`), the
forwarding groups' settings included; :class:`WorkerContext` hands each group loop
its settings, its Redis clients and the PostgreSQL pool. They live apart from
:mod:`fleettrace_worker.process` so that the group loop factories (persist,
LangSmith, OTLP) can take a context without importing the process that runs them:
the runner imports the loops, never the other way round.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Final

import redis
from psycopg_pool import ConnectionPool

from fleettrace.cluster_settings import DEFAULT_WAIT_TIMEOUT_MS, ReplicaWait, parse_flag
from fleettrace.connection import connect_redis
from fleettrace.environment import REDIS_CLUSTER_VARIABLE, redact_url
from fleettrace.errors import ConfigurationError
from fleettrace.keys import DEFAULT_NAMESPACE, MAX_ENTRY_BYTES, MAX_SHARDS, Keys
from fleettrace_worker.forward.langsmith.settings import LangSmithSettings
from fleettrace_worker.forward.otlp.settings import OtlpSettings
from fleettrace_worker.keys import GROUPS, METRICS_PLANS_MAX, PERSIST_GROUP
from fleettrace_worker.presence import default_consumer_name
from fleettrace_worker.settings import WORKER_PREFIX, WorkerEnvironment, read_environment
from fleettrace_worker.store.database import create_pool
from fleettrace_worker.stream.consumer import Consumer
from fleettrace_worker.stream.groups import DEFAULT_MAX_AGE_S, DEFAULT_MAX_LAG, GroupLimits
from fleettrace_worker.stream.loop import LoopSettings
from fleettrace_worker.stream.loopstate import (
    DEFAULT_BATCH_RECORDS,
    DEFAULT_BLOCK_MS,
    DEFAULT_MAX_DELIVERIES,
    DEFAULT_PROGRESS_LIMIT_S,
    DEFAULT_RETRY_MAX_S,
)

#: Seconds a Redis call may take beyond a blocking read's own wait.
REDIS_MARGIN_S: Final = 5.0
ENV_PREFIX: Final = WORKER_PREFIX


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker process is told; built at the edge (the CLI) from
    arguments and ``FLEETTRACE_WORKER_*`` variables."""

    redis_url: str
    database_url: str
    namespace: str = DEFAULT_NAMESPACE
    #: A read replica the dashboard reads from (None: the primary); the worker writes
    #: to ``database_url`` only.
    database_read_url: str | None = field(default=None, repr=False)
    consumer: str = field(default_factory=default_consumer_name)
    groups: tuple[str, ...] = (PERSIST_GROUP,)
    batch_records: int = DEFAULT_BATCH_RECORDS
    block_ms: int = DEFAULT_BLOCK_MS
    claim_idle_ms: int = 30_000
    max_deliveries: int = DEFAULT_MAX_DELIVERIES
    retry_max_s: float = DEFAULT_RETRY_MAX_S
    trim_interval_s: float = 5.0
    health_interval_s: float = 2.0
    #: PostgreSQL statement_timeout and lock_timeout of the worker's connections (0: off);
    #: a stop waits for at most about two statements (docker-compose's 30 s grace).
    statement_timeout_ms: int = 10_000
    lock_timeout_ms: int = 5_000
    #: Not ready once a group holds work this long without finishing a batch.
    progress_limit_s: float = DEFAULT_PROGRESS_LIMIT_S
    burst: bool = False
    http: str | None = None
    #: Also serve the dashboard on ``http`` (docs/dashboard.md), with this token if set.
    dashboard: bool = False
    dashboard_token: str | None = field(default=None, repr=False)
    #: Plans /metrics exports with a ``plan`` label (the costliest); 0 exports none.
    metrics_plans: int = 0
    #: A group past either limit is reported behind (log and /metrics); 0: no limit.
    group_max_lag: int = DEFAULT_MAX_LAG
    group_max_age_s: float = DEFAULT_MAX_AGE_S
    #: Where the worker leaves its runtime file for ``--check`` (None: nowhere).
    runtime_dir: str | None = None
    #: Dead-letter an entry whose data field is larger than this, without decoding it.
    max_entry_bytes: int = MAX_ENTRY_BYTES
    #: The forwarding groups' settings (``forward/*/settings.py``); off by default.
    langsmith: LangSmithSettings = field(default_factory=LangSmithSettings)
    otlp: OtlpSettings = field(default_factory=OtlpSettings)
    #: ``redis_url`` is a seed node of a Redis Cluster (docs/scaling.md).
    redis_cluster: bool = False
    #: Replicas the acknowledging transaction waits for (None: auto, one on a
    #: cluster whose master has a replica), and for how long.
    wait_replicas: int | None = None
    wait_timeout_ms: int = DEFAULT_WAIT_TIMEOUT_MS
    #: The shards this worker reads (docs/scaling.md); None: every shard it finds.
    shards: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        self.replica_wait()
        if self.shards is not None and (
            not self.shards or any(not 0 <= shard < MAX_SHARDS for shard in self.shards)
        ):
            raise ConfigurationError(
                f"shards must be shard numbers 0-{MAX_SHARDS - 1}, got {self.shards!r}"
            )
        positive = {
            "batch_records": self.batch_records,
            "claim_idle_ms": self.claim_idle_ms,
            "max_deliveries": self.max_deliveries,
            "retry_max_s": self.retry_max_s,
            "trim_interval_s": self.trim_interval_s,
            "health_interval_s": self.health_interval_s,
            "progress_limit_s": self.progress_limit_s,
            "max_entry_bytes": self.max_entry_bytes,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ConfigurationError(f"{name} must be positive, got {value}")
        if not 0 <= self.metrics_plans <= METRICS_PLANS_MAX:
            raise ConfigurationError(
                f"metrics_plans must be 0-{METRICS_PLANS_MAX}, got {self.metrics_plans}"
            )
        if self.group_max_lag < 0 or self.group_max_age_s < 0:
            raise ConfigurationError("group_max_lag and group_max_age_s must not be negative")
        for name, number in (
            ("block_ms", self.block_ms),
            ("statement_timeout_ms", self.statement_timeout_ms),
            ("lock_timeout_ms", self.lock_timeout_ms),
        ):
            if number < 0:
                raise ConfigurationError(f"{name} must not be negative, got {number}")
        if not self.consumer or len(self.consumer) > 200:
            raise ConfigurationError("consumer name must be 1-200 characters")
        unknown = [g for g in self.groups if g not in GROUPS]
        if unknown or not self.groups:
            raise ConfigurationError(
                f"groups must be among {', '.join(GROUPS)}, got {', '.join(self.groups) or 'none'}"
            )

    def __repr__(self) -> str:
        return (
            f"WorkerSettings(redis_url={redact_url(self.redis_url)!r}, "
            f"database_url={redact_url(self.database_url)!r}, namespace={self.namespace!r}, "
            f"consumer={self.consumer!r}, groups={self.groups!r}, "
            f"batch_records={self.batch_records}, block_ms={self.block_ms}, burst={self.burst})"
        )

    @classmethod
    def from_env(
        cls,
        redis_url: str,
        database_url: str,
        environ: Mapping[str, str] | None = None,
        **given: object,
    ) -> WorkerSettings:
        """Settings from the environment (:func:`fleettrace_worker.settings.read_environment`:
        ``FLEETTRACE_WORKER_<NAME>`` variables such as ``..._BATCH_RECORDS=5000``, the
        LangSmith and OTLP groups' variables), overridden by ``given`` values that are
        not None."""
        return cls.from_environment(read_environment(environ), redis_url, database_url, **given)

    @classmethod
    def from_environment(
        cls, env: WorkerEnvironment, redis_url: str, database_url: str, **given: object
    ) -> WorkerSettings:
        """Settings from an environment already read (the CLI reads it once), overridden
        by ``given`` values that are not None."""
        defaults = cls(redis_url, database_url)
        values: dict[str, object] = dict(env.worker.given())
        values["langsmith"] = env.langsmith
        values["otlp"] = env.otlp
        if env.redis_cluster is not None:
            values["redis_cluster"] = parse_flag(REDIS_CLUSTER_VARIABLE, env.redis_cluster)
        wait = ReplicaWait.parse(env.wait_replicas, env.wait_timeout_ms)
        values["wait_replicas"], values["wait_timeout_ms"] = wait.replicas, wait.timeout_ms
        values.update({name: value for name, value in given.items() if value is not None})
        return replace(defaults, **values)  # type: ignore[arg-type]

    def replica_wait(self) -> ReplicaWait:
        return ReplicaWait(self.wait_replicas, self.wait_timeout_ms)

    def group_limits(self) -> GroupLimits:
        return GroupLimits(max_lag=self.group_max_lag, max_age_s=self.group_max_age_s)

    def loop_settings(self) -> LoopSettings:
        return LoopSettings(
            batch_records=self.batch_records,
            block_ms=self.block_ms,
            max_deliveries=self.max_deliveries,
            retry_max_s=self.retry_max_s,
            progress_limit_s=self.progress_limit_s,
            burst=self.burst,
            max_entry_bytes=self.max_entry_bytes,
        )


class WorkerContext:
    """What group loops are built from: settings, keys, Redis clients, the pool."""

    def __init__(self, settings: WorkerSettings, *, shard: int = 0) -> None:
        self.settings = settings
        self.keys = Keys(settings.namespace, shard=shard)
        self._pool: ConnectionPool | None = None
        self._clients: list[redis.Redis] = []
        self._root: WorkerContext | None = None

    def for_shard(self, shard: int) -> WorkerContext:
        """The same worker's context for the loops of ``shard``: their keys are the
        shard's; clients and the pool are this context's (closed with it)."""
        view = WorkerContext(self.settings, shard=shard)
        view._root = self._root or self
        return view

    def redis(self) -> redis.Redis:
        """A client of its own (a loop's blocking reads must not hold up the others),
        closed by :meth:`close`."""
        if self._root is not None:
            return self._root.redis()
        client = connect_redis(
            self.settings.redis_url,
            socket_timeout_s=self.settings.block_ms / 1000 + REDIS_MARGIN_S,
            cluster=self.settings.redis_cluster,
        )
        self._clients.append(client)
        return client

    def loop_settings(self) -> LoopSettings:
        """What every group loop of this worker is told (each group derives its own)."""
        return self.settings.loop_settings()

    def consumer(self, group: str) -> Consumer:
        return Consumer(
            self.redis(),
            self.keys,
            group,
            self.settings.consumer,
            claim_idle_ms=self.settings.claim_idle_ms,
            wait=self.settings.replica_wait(),
        )

    def pool(self) -> ConnectionPool:
        if self._root is not None:
            return self._root.pool()
        if self._pool is None:
            self._pool = create_pool(
                self.settings.database_url,
                min_size=1,
                max_size=2,
                statement_timeout_ms=self.settings.statement_timeout_ms,
                lock_timeout_ms=self.settings.lock_timeout_ms,
            )
        return self._pool

    def close(self) -> None:
        """Close the pool and every client made here; safe to call twice."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        while self._clients:
            self._clients.pop().close()
