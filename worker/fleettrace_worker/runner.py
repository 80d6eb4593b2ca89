"""The worker process: one thread per consumer group, and the housekeeping around them.

Each group loop (``persist``; ``langsmith`` when tracing is on; ``otlp`` when an
OTLP endpoint is set) runs in a thread of
its own with its own Redis connection, so a slow LangSmith never holds back
persistence and the other way round. The main thread handles signals, writes the
health key, loads the batch function library when Redis lacks it (at start and each
health tick: a restart without persistence loses it), trims the streams and serves
HTTP, and waits for the loops to finish. One more thread keeps the aggregates of the
producers' counters that readers read (aggregator.py).

Shutdown follows rq's warm and cold shutdown: the first SIGTERM or SIGINT stops
reading, lets each loop finish and acknowledge the batch in hand, and exits 0; a
second one exits at once without acknowledging anything (what was in hand stays
pending and is taken over later by XAUTOCLAIM, so nothing is lost).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

import redis
from psycopg_pool import ConnectionPool

from fleettrace.batch_script import library_loaded, load_library
from fleettrace.connection import connect_redis, redact_url
from fleettrace.errors import ConfigurationError, FleettraceError, TransientError
from fleettrace.keys import (
    DEFAULT_NAMESPACE,
    GROUPS,
    LANGSMITH_GROUP,
    MAX_ENTRY_BYTES,
    METRICS_PLANS_MAX,
    OTLP_GROUP,
    PERSIST_GROUP,
    WORKER_HEALTH_TTL_S,
    Keys,
)
from fleettrace_worker.aggregator import Aggregator
from fleettrace_worker.consumer import Consumer
from fleettrace_worker.database import create_pool
from fleettrace_worker.deadletter import DEAD_LETTER_LOG
from fleettrace_worker.forwarder import langsmith_loop
from fleettrace_worker.groups import (
    DEFAULT_MAX_AGE_S,
    DEFAULT_MAX_LAG,
    GroupLimits,
    GroupWatch,
    inspect_groups,
    loop_streams,
)
from fleettrace_worker.loop import GroupLoop, LoopSettings
from fleettrace_worker.otlp import otlp_loop
from fleettrace_worker.persist import PersistLoop
from fleettrace_worker.presence import PresenceFile, default_consumer_name
from fleettrace_worker.repository import LLMTraceRepository
from fleettrace_worker.trim import trim_streams

if TYPE_CHECKING:
    from fleettrace_worker.http import MetricsServer

log = logging.getLogger(__name__)

#: Exit code of a second signal: stopped at once, nothing acknowledged.
EXIT_KILLED: Final = 130
#: Seconds a Redis call may take beyond a blocking read's own wait.
REDIS_MARGIN_S: Final = 5.0
ENV_PREFIX: Final = "FLEETTRACE_WORKER_"
#: The settings read from ``FLEETTRACE_WORKER_<NAME>`` variables (and CONSUMER).
ENV_SETTINGS: Final = (
    "batch_records",
    "block_ms",
    "claim_idle_ms",
    "max_deliveries",
    "statement_timeout_ms",
    "lock_timeout_ms",
    "progress_limit_s",
    "metrics_plans",
    "group_max_lag",
    "group_max_age_s",
    "max_entry_bytes",
)


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker process is told; built at the edge (the CLI) from
    arguments and ``FLEETTRACE_WORKER_*`` variables."""

    redis_url: str
    database_url: str
    namespace: str = DEFAULT_NAMESPACE
    consumer: str = field(default_factory=default_consumer_name)
    groups: tuple[str, ...] = (PERSIST_GROUP,)
    batch_records: int = 4_000
    block_ms: int = 1_000
    claim_idle_ms: int = 30_000
    max_deliveries: int = 5
    retry_max_s: float = 5.0
    trim_interval_s: float = 5.0
    health_interval_s: float = 2.0
    #: PostgreSQL statement_timeout and lock_timeout of the worker's connections (0: off);
    #: a stop waits for at most about two statements (docker-compose's 30 s grace).
    statement_timeout_ms: int = 10_000
    lock_timeout_ms: int = 5_000
    #: Not ready once a group holds work this long without finishing a batch.
    progress_limit_s: float = 120.0
    burst: bool = False
    http: str | None = None
    #: Plans /metrics exports with a ``plan`` label (the costliest); 0 exports none.
    metrics_plans: int = 0
    #: A group past either limit is reported behind (log and /metrics); 0: no limit.
    group_max_lag: int = DEFAULT_MAX_LAG
    group_max_age_s: float = DEFAULT_MAX_AGE_S
    #: Where the worker leaves its runtime file for ``--check`` (None: nowhere).
    runtime_dir: str | None = None
    #: Dead-letter an entry whose data field is larger than this, without decoding it.
    max_entry_bytes: int = MAX_ENTRY_BYTES

    def __post_init__(self) -> None:
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
        """Settings from ``FLEETTRACE_WORKER_<NAME>`` variables (``..._BATCH_RECORDS=5000``),
        overridden by ``given`` values that are not None."""
        env = os.environ if environ is None else environ
        defaults = cls(redis_url, database_url)
        values: dict[str, object] = {}
        for name in ENV_SETTINGS:
            raw = env.get(ENV_PREFIX + name.upper())
            if raw:
                kind = float if name.endswith("_s") else int
                try:
                    values[name] = kind(raw)
                except ValueError:
                    what = "a whole number" if kind is int else "a number"
                    raise ConfigurationError(
                        f"{ENV_PREFIX}{name.upper()} must be {what}, got {raw!r}"
                    ) from None
        consumer = env.get(ENV_PREFIX + "CONSUMER")
        if consumer:
            values["consumer"] = consumer
        values.update({name: value for name, value in given.items() if value is not None})
        return replace(defaults, **values)  # type: ignore[arg-type]

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

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.keys = Keys(settings.namespace)
        self._pool: ConnectionPool | None = None
        self._clients: list[redis.Redis] = []

    def redis(self) -> redis.Redis:
        """A client of its own (a loop's blocking reads must not hold up the others),
        closed by :meth:`close`."""
        client = connect_redis(
            self.settings.redis_url,
            socket_timeout_s=self.settings.block_ms / 1000 + REDIS_MARGIN_S,
        )
        self._clients.append(client)
        return client

    def consumer(self, group: str) -> Consumer:
        return Consumer(
            self.redis(),
            self.keys,
            group,
            self.settings.consumer,
            claim_idle_ms=self.settings.claim_idle_ms,
        )

    def pool(self) -> ConnectionPool:
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


GroupLoopFactory = Callable[[WorkerContext], GroupLoop[Any]]


def persist_loop(context: WorkerContext) -> GroupLoop[Any]:
    pool = context.pool()
    return PersistLoop(
        context.consumer(PERSIST_GROUP),
        LLMTraceRepository(pool),
        replace(context.settings.loop_settings(), pipeline=True),
        pool=pool,
    )


#: The group loops a worker can run, by group name. A group is added with one line.
GROUP_LOOPS: dict[str, GroupLoopFactory] = {
    PERSIST_GROUP: persist_loop,
    LANGSMITH_GROUP: langsmith_loop,
    OTLP_GROUP: otlp_loop,
}


@dataclass
class _Thread:
    loop: GroupLoop[Any]
    thread: threading.Thread
    error: BaseException | None = None


class Worker:
    """One worker process; ``run()`` returns the exit code."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.context = WorkerContext(settings)
        self.keys = self.context.keys
        self.stop = threading.Event()
        self.started_at = time.time()
        self._threads: list[_Thread] = []
        self._signals = 0
        self._client: redis.Redis | None = None
        self.group_limits = settings.group_limits()
        self.group_watch = GroupWatch(self.group_limits)

    # -- status, read by the health key, --check and HTTP -------------------------

    @property
    def loops(self) -> list[GroupLoop[Any]]:
        return [t.loop for t in self._threads]

    def ready(self) -> bool:
        """Every loop reached its servers on its last try, none has stopped, none is
        stalled with work in hand, and none met entries it needs an upgrade to read."""
        return (
            bool(self._threads)
            and not self.stop.is_set()
            and all(
                t.thread.is_alive() and t.loop.stats.not_ready_reason() is None
                for t in self._threads
            )
        )

    def health(self) -> dict[str, object]:
        return {
            "consumer": self.settings.consumer,
            "pid": os.getpid(),
            "ready": self.ready(),
            "started_at": self.started_at,
            "updated_at": time.time(),
            "groups": [loop.stats.snapshot() for loop in self.loops],
        }

    # -- the process ---------------------------------------------------------------

    def run(self) -> int:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        server = None
        loops: list[GroupLoop[Any]] = []
        presence, aggregator = None, None
        if self.settings.runtime_dir is not None:
            presence = PresenceFile(
                Path(self.settings.runtime_dir), self.settings.consumer, self.settings.namespace
            )
        try:
            # Every loop is built before any starts: a setting that cannot work (no
            # LANGSMITH_API_KEY) stops the worker before it reads a single entry.
            for group in self.settings.groups:
                factory = GROUP_LOOPS.get(group)
                if factory is None:
                    raise ConfigurationError(f"group {group!r} is not available in this build")
                loops.append(factory(self.context))
            self._ensure_library()
            if not self.settings.burst:  # a drain that exits keeps no aggregates
                reached = lambda: any(loop.stats.ready for loop in self.loops)  # noqa: E731
                aggregator = Aggregator(self.context.redis(), self.keys, self.stop, ready=reached)
                aggregator.start()
            server = self._serve_http()
            if presence is not None:
                presence.write()
            for loop in loops:
                self._start(loop)
            # Everything made so far lives as long as the process: keep the cyclic
            # collector from walking it again and again under large batches.
            gc.freeze()
            self._supervise()
        finally:
            if server is not None:
                server.shutdown()
                server.server_close()
            self.stop.set()
            for item in self._threads:
                item.thread.join()
            if aggregator is not None:
                aggregator.thread.join()
            self._write_health()
            for loop in loops:
                _close(loop)
            DEAD_LETTER_LOG.flush()
            if presence is not None:
                presence.remove()
            if self._client is not None:
                self._client.close()
                self._client = None
            self.context.close()
        for item in self._threads:
            if isinstance(item.error, FleettraceError):
                raise item.error
            if item.error is not None:
                return 1
        return 0

    def _start(self, loop: GroupLoop[Any]) -> None:
        item = _Thread(loop, threading.Thread())

        def target() -> None:
            try:
                loop.run(self.stop)
            except BaseException as error:
                item.error = error
                if not isinstance(error, FleettraceError):
                    log.exception("group %s failed", loop.group)
                self.stop.set()

        item.thread = threading.Thread(target=target, name=f"group-{loop.group}", daemon=True)
        self._threads.append(item)
        item.thread.start()

    def _supervise(self) -> None:
        """Housekeeping until every loop has finished (stop, burst, or an error)."""
        next_trim = time.monotonic() + self.settings.trim_interval_s
        while any(t.thread.is_alive() for t in self._threads):
            self._write_health()
            self._ensure_library()
            if time.monotonic() >= next_trim:
                next_trim = time.monotonic() + self.settings.trim_interval_s
                self._trim()
                self._watch_groups()
            for item in self._threads:
                item.thread.join(self.settings.health_interval_s / len(self._threads))

    def _redis(self) -> redis.Redis:
        if self._client is None:
            self._client = connect_redis(self.settings.redis_url)
        return self._client

    def _write_health(self) -> None:
        try:
            self._redis().set(
                self.keys.worker_health(self.settings.consumer),
                json.dumps(self.health()),
                ex=WORKER_HEALTH_TTL_S,
            )
        except (redis.RedisError, FleettraceError) as error:
            log.debug("health key not written: %s", error)

    def _ensure_library(self) -> None:
        """Load the batch function library when the server has functions and lacks it."""
        try:
            if library_loaded(self._redis()) is False and load_library(self._redis()):
                log.info("loaded the batch function library into Redis")
        except (redis.RedisError, FleettraceError) as error:
            log.debug("batch function library not checked: %s", error)

    def _streams(self) -> list[str]:
        """The streams the loops read: their walks found them, no walk of its own."""
        return loop_streams(self.loops) or []

    def _trim(self) -> None:
        try:
            trim_streams(self._redis(), self.keys, streams=self._streams())
        except TransientError as error:
            log.debug("streams not trimmed: %s", error)

    def _watch_groups(self) -> None:
        """Warn (rate-limited) about groups holding the trim floor for too long."""
        try:
            self.group_watch.check(
                inspect_groups(self._redis(), self.keys, streams=self._streams())
            )
        except TransientError as error:
            log.debug("consumer groups not inspected: %s", error)

    def _serve_http(self) -> MetricsServer | None:
        if self.settings.http is None:
            return None
        # Imported here: prometheus_client and the live reader only when HTTP is asked for.
        from fleettrace_worker.http import serve  # noqa: PLC0415

        return serve(
            self.settings.http, self, self.context.redis(), plans=self.settings.metrics_plans
        )

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("second signal: exiting without acknowledging the batch in hand")
            os._exit(EXIT_KILLED)
        log.info("signal %d: finishing the batch in hand, then exiting", signum)
        self.stop.set()


def _close(loop: GroupLoop[Any]) -> None:
    """Release what a loop opened (ForwardLoop: its request threads and HTTP session)."""
    close = getattr(loop, "close", None)
    if callable(close):
        try:
            close()
        except Exception:
            log.exception("group %s did not close cleanly", loop.group)
