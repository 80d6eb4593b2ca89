"""The ACL lines of docs/security.md, made into users of a private Redis 7.

The lines are templates whose only placeholders are the namespace (``fleettrace``
inside the braces), the user name (also inside the key patterns) and the password;
these helpers replace exactly those, so the users the tests make are the ones an
operator makes from the page. Never used on the shared server.
"""

from __future__ import annotations

import re
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from fleettrace.connection import connect_redis
from fleettrace.emitter import Emitter, EmitterSettings
from fleettrace.keys import Keys
from fleettrace_worker.keys import PERSIST_GROUP
from fleettrace_worker.store.database import create_pool
from fleettrace_worker.store.persist import PersistLoop
from fleettrace_worker.store.repository import LLMTraceRepository
from fleettrace_worker.stream.consumer import Consumer
from fleettrace_worker.stream.loop import LoopSettings
from tests.factories import _trace
from tests.servers import PrivateRedis
from tests.worker_helpers import migrated

ROOT = Path(__file__).resolve().parents[1]
SECURITY_DOC = ROOT / "docs" / "security.md"
AGENT = "fleettrace-agent"
BUDGET_AGENT = "fleettrace-agent-budget"
WORKER = "fleettrace-worker"


def documented_acl_lines(doc: Path = SECURITY_DOC) -> dict[str, str]:
    """The ``ACL SETUSER`` lines of the security page (rules only), by user name."""
    lines = re.findall(r"^ACL SETUSER (\S+) (.+)$", doc.read_text(), flags=re.MULTILINE)
    return {user: rules for user, rules in lines}


def rules(template: str, keys: Keys, user: str, password: str, *, without: str = "") -> list[str]:
    """The rules of the documented line ``template`` for ``user`` in ``keys``' namespace."""
    line = documented_acl_lines()[template]
    line = line.replace(f":{template}:", f":{user}:").replace("{fleettrace}", keys.prefix)
    found = line.split()
    assert not without or without in found, f"{without} is not in the {template} line"
    return [f">{password}" if r.startswith(">") else r for r in found if r != without]


def create_user(
    admin: redis.Redis,
    template: str,
    keys: Keys,
    user: str,
    password: str,
    *,
    without: str = "",
) -> str:
    """Make ``user`` from the documented line and return its URL on ``admin``'s server."""
    admin.execute_command(
        "ACL", "SETUSER", user, *rules(template, keys, user, password, without=without)
    )
    kwargs = admin.connection_pool.connection_kwargs
    return f"redis://{user}:{password}@{kwargs['host']}:{kwargs['port']}/0"


#: The LangSmith key the security tests give the forwarder, and the namespace they use.
API_KEY = "lsv2_sk_" + "7f3e9a1c5b2d4e6f8a0b1c2d3e4f5a6b" + "_9c8d7e6f5a"
NS = "fleet"


@dataclass
class Secured:
    """A private Redis 7 with users made from the documented lines: agents ``alice``
    and ``bob``, ``carol`` with the budget line, ``worker``."""

    admin: redis.Redis
    urls: dict[str, str]
    keys: Keys

    def client(self, user: str) -> redis.Redis:
        return redis.Redis.from_url(self.urls[user])

    def emitter(self, user: str, **settings: Any) -> Emitter:
        return Emitter(
            EmitterSettings(
                redis_url=self.urls[user],
                namespace=self.keys.namespace,
                retry_initial_s=0.01,
                retry_max_s=0.05,
                **settings,
            )
        )


def _secure(server: PrivateRedis) -> Secured:
    admin = redis.Redis.from_url(server.url)
    keys = Keys(NS)
    urls = {}
    for user, template in (
        ("alice", AGENT),
        ("bob", AGENT),
        ("carol", BUDGET_AGENT),
        ("worker", WORKER),
    ):
        urls[user] = create_user(admin, template, keys, user, uuid.uuid4().hex)
    return Secured(admin, urls, keys)


def _own_keys(admin: redis.Redis, keys: Keys) -> set[str]:
    return {k.decode() for k in admin.scan_iter(match=f"{keys.prefix}*", count=1000)}


def _bobs_records(secured: Secured) -> dict[str, object]:
    """Bob records; what his keys hold afterwards."""
    with secured.emitter("bob") as em:
        for i in range(5):
            em.record(_trace(i, plan="shared", cost=1.0))
        em.observe("plan.decisions_count", 1, {"plan": "shared"})
        assert em.flush(10)
        bob_id = em.emitter_id
    return {"emitter_id": bob_id, **_snapshot(secured.admin, secured.keys.for_producer("bob"))}


def _snapshot(admin: redis.Redis, keys: Keys) -> dict[str, object]:
    return {
        key: (admin.type(key), admin.xlen(key) if admin.type(key) == b"stream" else admin.dump(key))
        for key in sorted(_own_keys(admin, keys))
        if key.startswith(keys.producer_prefix + ":")
    }


def run_worker_once(secured: Secured, database_url: str) -> str:
    """A burst of the persist group as the worker user; returns the migrated URL."""
    db = migrated(database_url)
    worker = connect_redis(secured.urls["worker"])
    pool = create_pool(db, min_size=1, max_size=2)
    try:
        burst = LoopSettings(burst=True, retry_initial_s=0.01, retry_max_s=0.05)
        persist = PersistLoop(
            Consumer(worker, secured.keys, PERSIST_GROUP, "w1"),
            LLMTraceRepository(pool),
            burst,
            pool=pool,
        )
        persist.run(threading.Event())
    finally:
        pool.close()
        worker.close()
    return db
