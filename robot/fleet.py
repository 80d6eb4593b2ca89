"""Keywords that give a smoke-test run servers of its own and speak the CLI's JSON.

Suite setup points ``FLEETTRACE_REDIS_URL``, ``FLEETTRACE_DATABASE_URL`` and
``FLEETTRACE_NAMESPACE`` at a fresh namespace and database, the way a user points
the CLI at theirs; every ``fleettrace`` process the suite starts inherits them.
Suite teardown removes both. The servers are the pytest suite's (tests/servers.py
``SuiteServers``): the machine's, else servers of the run's own.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import redis
from robot.api.deco import keyword, library
from tests.servers import SuiteServers

from fleettrace.keys import Keys


@library(scope="SUITE")
class fleet:  # noqa: N801 (Robot imports a library by its module name)
    def __init__(self) -> None:
        self.keys: Keys | None = None
        self.database: str | None = None
        self.servers: SuiteServers | None = None

    @keyword
    def use_a_fresh_namespace_and_database(self) -> None:
        self.servers = SuiteServers()
        self.keys = Keys(f"robot-{uuid.uuid4().hex[:12]}")
        self.database = f"fleettrace_robot_{uuid.uuid4().hex[:12]}"
        admin_url = self.servers.pg_admin_url
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.database}"')
        os.environ["FLEETTRACE_REDIS_URL"] = self.servers.redis_url
        os.environ["FLEETTRACE_DATABASE_URL"] = f"{admin_url.rsplit('/', 1)[0]}/{self.database}"
        os.environ["FLEETTRACE_NAMESPACE"] = self.keys.namespace
        for name in list(os.environ):
            if name.startswith(("LANGCHAIN_", "LANGSMITH_")):
                del os.environ[name]

    @keyword
    def remove_the_namespace_and_database(self) -> None:
        if self.servers is None:
            return
        try:
            if self.keys is not None:
                client = redis.Redis.from_url(self.servers.redis_url)
                for key in client.scan_iter(match=f"{self.keys.prefix}*", count=1000):
                    client.delete(key)
                client.close()
            if self.database is not None:
                with psycopg.connect(self.servers.pg_admin_url, autocommit=True) as admin:
                    admin.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        finally:
            self.servers.close()
            self.servers = None

    @keyword
    def fleettrace_command(self) -> str:
        """The ``fleettrace`` script installed next to this Python, as a user runs it."""
        script = Path(sys.executable).parent / "fleettrace"
        if not script.exists():
            raise AssertionError(f"no fleettrace command at {script}; install the package")
        return str(script)

    @keyword
    def python_command(self) -> str:
        return sys.executable

    @keyword
    def parse_json(self, text: str) -> Any:
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise AssertionError(f"not JSON ({error}): {text[:500]!r}") from None

    @keyword
    def token_usage_should_add_up_to(
        self, figures: list[dict[str, Any]], token_type: str, expected: int
    ) -> None:
        """The ``actor.token_usage`` sums of one token type, over every provider and
        model, must equal what the agent recorded."""
        series = [
            s
            for s in figures
            if s["key"] == "actor.token_usage" and s["labels"].get("token_type") == token_type
        ]
        if not series:
            raise AssertionError(f"fleettrace metrics shows no {token_type} token usage")
        total = sum(s["sum"] for s in series)
        if total != int(expected):
            raise AssertionError(
                f"{token_type} tokens: metrics show {total}, the agent recorded {expected}"
            )

    @keyword
    def llm_errors_should_add_up_to(self, figures: list[dict[str, Any]], expected: int) -> None:
        total = sum(s["sum"] for s in figures if s["key"] == "llm.errors_count")
        if total != int(expected):
            raise AssertionError(f"metrics show {total} failed calls, agent recorded {expected}")

    @keyword
    def cost_summary_should_add_up_to(
        self, rows: list[dict[str, Any]], recorded: dict[str, Any]
    ) -> None:
        """``fleettrace traces cost --json`` rows, summed over the groups, must count
        every call and token the agent recorded."""
        for name, expected in (
            ("calls", len(recorded["trace_ids"])),
            ("prompt_tokens", recorded["prompt_tokens"]),
            ("completion_tokens", recorded["completion_tokens"]),
        ):
            total = sum(row[name] for row in rows)
            if total != expected:
                raise AssertionError(f"cost summary: {name} {total}, the agent recorded {expected}")
        if sum(row["cost_usd"] or 0 for row in rows) <= 0:
            raise AssertionError(f"cost summary prices nothing: {rows}")

    @keyword
    def trace_ids_of(self, listing: dict[str, Any]) -> list[str]:
        """The trace ids of one page of ``fleettrace traces list --json``."""
        return [item["trace_id"] for item in listing["items"]]
