"""The worker process: one thread per consumer group, and the housekeeping around them.

Each group loop (``persist``; ``langsmith`` when tracing is on; ``otlp`` when an
OTLP endpoint is set) runs in a thread of
its own with its own Redis connection, so a slow LangSmith never holds back
persistence and the other way round. The main thread handles signals, writes the
health key, loads the batch function library when Redis lacks it (at start and each
health tick: a restart without persistence loses it), trims the streams, makes the
coming days' table partitions (at start, then hourly: store/partitions.py), serves
HTTP, and waits for the loops to finish. One more thread keeps the aggregates of the
producers' counters that readers read (aggregator.py).

A sharded namespace (docs/scaling.md) gets these loops and an aggregator per shard,
each over the shard's own keys (one hash slot): the shards found at start by a walk
over every master, then each shard the walk meets later (at each health tick), unless
``WorkerSettings.shards`` names the shards to read.

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
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

import redis

from fleettrace.batch_script import library_loaded, load_library
from fleettrace.cluster import pinned
from fleettrace.connection import connect_redis
from fleettrace.errors import ConfigurationError, FleettraceError, TransientError
from fleettrace_worker.context import WorkerContext, WorkerSettings
from fleettrace_worker.keys import LANGSMITH_GROUP, OTLP_GROUP, PERSIST_GROUP, WORKER_HEALTH_TTL_S
from fleettrace_worker.presence import PresenceFile
from fleettrace_worker.serve.aggregator import Aggregator
from fleettrace_worker.store import partitions
from fleettrace_worker.store.persist import PersistLoop
from fleettrace_worker.store.repository import LLMTraceRepository
from fleettrace_worker.stream.deadletter import DEAD_LETTER_LOG
from fleettrace_worker.stream.groups import (
    GroupWatch,
    inspect_groups,
    loop_streams,
)
from fleettrace_worker.stream.loop import GroupLoop
from fleettrace_worker.stream.shards import ShardWalk
from fleettrace_worker.stream.trim import trim_streams

if TYPE_CHECKING:
    from fleettrace_worker.serve.webserver import HttpServer

log = logging.getLogger(__name__)

#: The cyclic collector's thresholds in a running worker (Python's: 700, 10, 10).
GC_THRESHOLDS: Final = (50_000, 50, 50)
#: Exit code of a second signal: stopped at once, nothing acknowledged.
EXIT_KILLED: Final = 130
GroupLoopFactory = Callable[[WorkerContext], GroupLoop[Any]]


def persist_loop(context: WorkerContext) -> GroupLoop[Any]:
    pool = context.pool()
    return PersistLoop(
        context.consumer(PERSIST_GROUP),
        LLMTraceRepository(pool),
        replace(context.settings.loop_settings(), pipeline=True),
        pool=pool,
    )


def langsmith_loop(context: WorkerContext) -> GroupLoop[Any]:
    """The ``langsmith`` group; its client (langsmith, requests) loads only when a
    worker runs the group, so a persist-only worker starts without it."""
    from fleettrace_worker.forward.langsmith.group import langsmith_loop as make  # noqa: PLC0415

    return make(context)


def otlp_loop(context: WorkerContext) -> GroupLoop[Any]:
    """The ``otlp`` group, loaded the same way."""
    from fleettrace_worker.forward.otlp.group import otlp_loop as make  # noqa: PLC0415

    return make(context)


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
        #: The shards whose loops run, and the walk that finds new ones (None: a fixed list).
        self.shards: list[int] = []
        self._shard_walk: ShardWalk | None = None
        self._aggregators: list[Aggregator] = []

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
        presence = None
        if self.settings.runtime_dir is not None:
            presence = PresenceFile(
                Path(self.settings.runtime_dir), self.settings.consumer, self.settings.namespace
            )
        try:
            # Every loop is built before any starts: a setting that cannot work (no
            # LANGSMITH_API_KEY) stops the worker before it reads a single entry.
            for shard in self._first_shards():
                loops += self._shard_loops(shard)
            self._ensure_library()
            server = self._serve_http()
            if presence is not None:
                presence.write()
            for loop in loops:
                self._start(loop)
            # Everything made so far lives as long as the process: keep the cyclic
            # collector from walking it again and again under large batches.
            gc.freeze()
            # A batch makes thousands of short-lived containers; collecting the young
            # generation every 700 of them cost about 4 % of the worker's CPU.
            gc.set_threshold(*GC_THRESHOLDS)
            self._supervise()
        finally:
            if server is not None:
                server.shutdown()
                server.server_close()
            self.stop.set()
            for item in self._threads:
                item.thread.join()
            for aggregator in self._aggregators:
                aggregator.thread.join()
            self._write_health()
            for loop in self.loops or loops:
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

    def _first_shards(self) -> list[int]:
        """The shards read from the start: the configured ones, else those a whole walk
        over every master finds (shard 0 alone when Redis cannot be reached now: the
        walk goes on at each health tick; a refusal that waiting cannot mend, such as an
        untrusted certificate, stops the worker with its one line). Configured shards
        are added to the set of shards readers sum over."""
        if self.settings.shards is not None:
            chosen = sorted(set(self.settings.shards))
            try:  # so that readers sum them even when no worker walks for shards
                if [s for s in chosen if s]:
                    self._redis().sadd(self.keys.shard_registry, *[s for s in chosen if s])
            except (redis.RedisError, FleettraceError) as error:
                log.warning("shards not recorded for the readers: %s", error)
            return chosen
        self._shard_walk = ShardWalk(self._redis(), self.keys)
        try:
            self._shard_walk.advance(steps=None)
        except ConfigurationError:
            raise  # a TLS, password or rights problem: the worker's one-line refusal
        except FleettraceError as error:
            log.warning("shards not looked for at start: %s", error)
        return sorted(self._shard_walk.found)

    def _shard_loops(self, shard: int) -> list[GroupLoop[Any]]:
        """The group loops of ``shard`` (not started), and its aggregator (started)."""
        context = self.context if shard == 0 else self.context.for_shard(shard)
        loops = []
        for group in self.settings.groups:
            factory = GROUP_LOOPS.get(group)
            if factory is None:
                raise ConfigurationError(f"group {group!r} is not available in this build")
            loops.append(factory(context))
        self.shards.append(shard)
        if not self.settings.burst:  # a drain that exits keeps no aggregates
            reached = lambda: any(loop.stats.ready for loop in self.loops)  # noqa: E731
            # On a cluster: the shard's master, where its scripts can be pipelined.
            client = pinned(self.context.redis(), context.keys.producers)
            aggregator = Aggregator(client, context.keys, self.stop, ready=reached)
            self._aggregators.append(aggregator)
            aggregator.start()
        return loops

    def _new_shards(self) -> None:
        """Start the loops of shards the walk met since the last tick."""
        walk = self._shard_walk
        if walk is None or self.settings.burst:
            return
        try:
            walk.advance()
        except FleettraceError as error:
            log.debug("shards not looked for: %s", error)
        for shard in sorted(walk.found - set(self.shards)):
            log.info("found shard %d: reading it", shard)
            for loop in self._shard_loops(shard):
                self._start(loop)

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
        next_partitions = time.monotonic()
        while any(t.thread.is_alive() for t in self._threads):
            self._new_shards()
            self._write_health()
            self._ensure_library()
            if time.monotonic() >= next_partitions and self._ensure_partitions():
                next_partitions = time.monotonic() + partitions.PARTITION_INTERVAL_S
            if time.monotonic() >= next_trim:
                next_trim = time.monotonic() + self.settings.trim_interval_s
                self._trim()
                self._watch_groups()
            for item in self._threads:
                item.thread.join(self.settings.health_interval_s / len(self._threads))

    def _ensure_partitions(self) -> bool:
        """Make the coming days' partitions, so a day's rows never wait in the default
        partition; True when it ran. Only once the persist loop has reached PostgreSQL
        and checked its schema: before that, a database that is away or refuses the
        login is the loop's to report, once."""
        persisting = [loop for loop in self.loops if isinstance(loop, PersistLoop)]
        if not any(loop.schema_version is not None for loop in persisting):
            return False
        made = partitions.ensure_quietly(self.context.pool())
        if made:
            log.info("created daily partitions %s", ", ".join(made))
        return True

    def _redis(self) -> redis.Redis:
        if self._client is None:
            self._client = connect_redis(
                self.settings.redis_url, cluster=self.settings.redis_cluster
            )
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

    def _serve_http(self) -> HttpServer | None:
        s, http = self.settings, self.settings.http
        if http is None:
            return None
        # Imported here: prometheus_client and the live reader only when HTTP is asked for.
        from fleettrace_worker.serve.dashboard.app import DashboardSettings  # noqa: PLC0415
        from fleettrace_worker.serve.http import serve  # noqa: PLC0415

        board = DashboardSettings(
            s.redis_url,
            s.database_url,
            s.namespace,
            s.dashboard_token,
            s.redis_cluster,
            read_url=s.database_read_url,
        )
        shown = board if s.dashboard else None
        return serve(http, self, self.context.redis(), plans=s.metrics_plans, dashboard=shown)

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
