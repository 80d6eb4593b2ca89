"""What one harness run works with: where the servers are, how big each measurement
is, and the namespaces and databases it made (all removed at the end)."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Final

import psycopg
import redis

from fleettrace.keys import Keys

DEFAULT_REDIS_URL: Final = "redis://127.0.0.1:6379/0"
DEFAULT_PG_ADMIN_URL: Final = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass(frozen=True)
class Sizes:
    """How much work each measurement does. ``FULL`` is the issue's; ``QUICK`` checks
    the machinery in well under a minute and its figures are not comparable."""

    hotpath_calls: int = 100_000
    hook_calls: int = 100_000
    traceable_calls: int = 5_000
    otel_calls: int = 50_000
    producer_records: int = 300_000
    baseline_producer_records: int = 60_000
    worker_records: int = 200_000
    baseline_worker_records: int = 60_000
    freshness_rates: tuple[int, ...] = (5_000, 10_000)
    freshness_s: float = 20.0
    ladder_start: int = 10_000
    ladder_step: float = 1.25
    ladder_max: int = 120_000
    ladder_s: float = 6.0
    baseline_ladder_start: int = 5_000
    drain_records: int = 1_000_000
    baseline_drain_records: int = 150_000
    emitter_buffer_records: int = 100_000
    capacity_calls: int = 40_000
    capacity_small_batch_calls: int = 5_000


FULL: Final = Sizes()
QUICK: Final = replace(
    FULL,
    hotpath_calls=5_000,
    hook_calls=5_000,
    traceable_calls=300,
    otel_calls=2_000,
    producer_records=5_000,
    baseline_producer_records=5_000,
    worker_records=6_000,
    baseline_worker_records=6_000,
    freshness_rates=(1_000,),
    freshness_s=2.0,
    ladder_start=2_000,
    ladder_step=2.0,
    ladder_max=2_000,
    ladder_s=1.5,
    baseline_ladder_start=2_000,
    drain_records=10_000,
    baseline_drain_records=5_000,
    emitter_buffer_records=5_000,
    capacity_calls=500,
    capacity_small_batch_calls=200,
)


@dataclass
class RunContext:
    redis_url: str
    pg_admin_url: str
    sizes: Sizes
    quick: bool
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    #: Pipeline name -> ``None`` when it can run, else why not.
    availability: dict[str, str | None] = field(default_factory=dict)
    _namespaces: list[Keys] = field(default_factory=list)
    _databases: list[str] = field(default_factory=list)

    @property
    def fleettrace_ready(self) -> bool:
        """Whether the agent side (the emitter) can be measured."""
        return self.availability.get("fleettrace-emitter", "unknown") is None

    def pipelines(self, *, worker: bool = True) -> list[str]:
        """The pipelines this run can measure, fleettrace first; with ``worker=False``,
        fleettrace counts as ready when its agent side is."""
        ready = [name for name in ("fleettrace", "baseline") if self.availability.get(name) is None]
        if not worker and "fleettrace" not in ready and self.fleettrace_ready:
            ready.insert(0, "fleettrace")
        return ready

    def namespace(self, purpose: str) -> Keys:
        """A namespace no one else uses, deleted by :meth:`cleanup`."""
        keys = Keys(f"bench-{self.run_id}-{purpose}-{len(self._namespaces)}")
        self._namespaces.append(keys)
        return keys

    def database(self, purpose: str) -> str:
        """The URL of a database made for this measurement, dropped by :meth:`cleanup`."""
        name = f"fleettrace_bench_{self.run_id}_{purpose}_{len(self._databases)}"
        with psycopg.connect(self.pg_admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self._databases.append(name)
        return f"{self.pg_admin_url.rsplit('/', 1)[0]}/{name}"

    def settle_database(self) -> None:
        """Write out what earlier measurements left dirty, so that a checkpoint of their
        rows does not stall this one's commits (needs a superuser; skipped otherwise)."""
        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(self.pg_admin_url, autocommit=True) as conn,
        ):
            conn.execute("CHECKPOINT")

    def drop_namespace(self, keys: Keys) -> None:
        client = redis.Redis.from_url(self.redis_url)
        try:
            batch: list[bytes] = []
            for key in client.scan_iter(match=f"{keys.prefix}*", count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    client.unlink(*batch)
                    batch.clear()
            if batch:
                client.unlink(*batch)
        finally:
            client.close()

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.pg_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if name in self._databases:
            self._databases.remove(name)

    def cleanup(self) -> None:
        for keys in self._namespaces:
            with contextlib.suppress(redis.RedisError):
                self.drop_namespace(keys)
        self._namespaces.clear()
        for name in list(self._databases):
            with contextlib.suppress(psycopg.Error):
                self.drop_database(f"{self.pg_admin_url.rsplit('/', 1)[0]}/{name}")

    @contextlib.contextmanager
    def scratch(self, purpose: str) -> Iterator[tuple[Keys, str]]:
        """A namespace and a database for one measurement, removed as soon as it ends
        so that a million-record backlog does not sit in Redis for the rest of the run."""
        keys = self.namespace(purpose)
        url = self.database(purpose)
        self.settle_database()
        try:
            yield keys, url
        finally:
            with contextlib.suppress(redis.RedisError):
                self.drop_namespace(keys)
            with contextlib.suppress(psycopg.Error):
                self.drop_database(url)


class Deadline:
    """A point in time a loop must not run past."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    @property
    def left_s(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.at
