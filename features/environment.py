"""Each scenario gets its own Redis namespace and its own PostgreSQL database, both
removed afterwards, so the features can run next to the other suites on the same
servers. The worker and the migrations run as real ``fleettrace`` processes.

Servers: the same as the pytest suite's (tests/servers.py ``SuiteServers``):
``FLEETTRACE_TEST_REDIS_URL`` (default redis://127.0.0.1:6379/0) and
``FLEETTRACE_TEST_PG_URL`` (an admin URL, default postgresql://postgres@127.0.0.1:5432/postgres),
or servers of the run's own when nothing answers there or ``FLEETTRACE_TEST_SERVERS=embedded``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass, field

import psycopg
import redis
from psycopg_pool import ConnectionPool
from tests.servers import SuiteServers

from fleettrace.emitter import Emitter
from fleettrace.keys import Keys

#: A command of the CLI that takes longer than this is a failure, not a wait.
COMMAND_TIMEOUT_S = 120.0


@dataclass
class Fleet:
    """The servers one scenario uses and the ``fleettrace`` command pointed at them."""

    keys: Keys
    database_url: str
    redis: redis.Redis
    redis_url: str
    emitters: list[Emitter] = field(default_factory=list)
    pools: list[ConnectionPool] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("LANGCHAIN_", "LANGSMITH_"))
        }
        env.update(
            FLEETTRACE_REDIS_URL=self.redis_url,
            FLEETTRACE_DATABASE_URL=self.database_url,
            FLEETTRACE_NAMESPACE=self.keys.namespace,
        )
        return env

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "fleettrace_worker.cli", *args]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``fleettrace ARGS`` to completion; its exit code is for the step to judge."""
        return subprocess.run(
            self.command(*args),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )

    def connect_db(self) -> psycopg.Connection:
        return psycopg.connect(self.database_url, autocommit=True)

    def close(self) -> None:
        for emitter in self.emitters:
            emitter.close()
        for pool in self.pools:
            pool.close()


def _admin(context) -> psycopg.Connection:
    return psycopg.connect(context.servers.pg_admin_url, autocommit=True)


def before_all(context):
    context.servers = SuiteServers()


def after_all(context):
    context.servers.close()


def before_scenario(context, scenario):
    name = f"fleettrace_behave_{uuid.uuid4().hex[:12]}"
    with _admin(context) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    redis_url = context.servers.redis_url
    context.fleet = Fleet(
        keys=Keys(f"behave-{uuid.uuid4().hex[:12]}"),
        database_url=f"{context.servers.pg_admin_url.rsplit('/', 1)[0]}/{name}",
        redis=redis.Redis.from_url(redis_url),
        redis_url=redis_url,
    )
    context.database_name = name


def after_scenario(context, scenario):
    fleet: Fleet = context.fleet
    fleet.close()
    for key in fleet.redis.scan_iter(match=f"{fleet.keys.prefix}*", count=1000):
        fleet.redis.delete(key)
    fleet.redis.close()
    with _admin(context) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{context.database_name}" WITH (FORCE)')
