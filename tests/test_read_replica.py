"""Reads from a streaming replica: a private PostgreSQL 15 primary and a hot standby
made from it with ``pg_basebackup -R``. The worker writes to the primary; the CLI's
reading commands and the dashboard, given the replica's URL, read the rows back
from it, while the primary's URL they are also given leads nowhere."""

from __future__ import annotations

import json
from collections.abc import Iterator

import psycopg
import pytest
import redis

from fleettrace.keys import Keys
from fleettrace_worker.cli import main
from fleettrace_worker.store import migrations
from fleettrace_worker.store.settings import DATABASE_READ_URL_VARIABLE
from tests.dashboard_helpers import dashboard, get_json
from tests.factories import add_traces, numbered_trace
from tests.servers import PrivatePostgres, free_port, pg_bin_dir
from tests.waiting import wait_until
from tests.worker_helpers import drain, scalar

pytestmark = pytest.mark.slow


@pytest.fixture
def replicated() -> Iterator[tuple[PrivatePostgres, PrivatePostgres]]:
    if not (pg_bin_dir() / "pg_basebackup").is_file():
        pytest.skip(f"no pg_basebackup in {pg_bin_dir()}: no streaming replica to read from")
    primary = PrivatePostgres()
    primary.start()
    try:
        replica = PrivatePostgres(replica_of=primary)
        replica.start()
        try:
            yield primary, replica
        finally:
            replica.close()
    finally:
        primary.close()


def test_reading_commands_and_the_dashboard_read_from_the_replica(  # noqa: PLR0917
    replicated: tuple[PrivatePostgres, PrivatePostgres],
    redis_url: str,
    redis_client: redis.Redis,
    keys: Keys,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    primary, replica = replicated
    with psycopg.connect(primary.url) as conn:
        migrations.migrate(conn)
    traces = [numbered_trace(i, cost_usd=0.01) for i in range(12)]
    add_traces(redis_client, keys, traces)
    drain(redis_url, keys, primary.url)
    assert scalar(primary.url, "SELECT count(*) FROM llm_traces") == 12
    wait_until(
        lambda: scalar(replica.url, "SELECT count(*) FROM llm_traces") == 12,
        message="the replica to replay the rows",
    )
    assert scalar(replica.url, "SELECT pg_is_in_recovery()::int") == 1

    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    ns = ("--namespace", keys.namespace)
    code = main(["traces", "list", "--json", *ns, "--limit", "50",
                 "--database-url", nowhere, "--database-read-url", replica.url])  # fmt: skip
    listed = json.loads(capsys.readouterr().out)
    assert code == 0
    assert sorted(item["trace_id"] for item in listed["items"]) == sorted(
        str(t.trace_id) for t in traces
    )
    # The variable does the same for every reading command.
    monkeypatch.setenv(DATABASE_READ_URL_VARIABLE, replica.url)
    code = main(["traces", "show", str(traces[3].trace_id), "--json", *ns,
                 "--database-url", nowhere])  # fmt: skip
    shown = json.loads(capsys.readouterr().out)
    assert (code, shown["trace_id"], shown["decision_id"]) == (0, str(traces[3].trace_id), "d-3")
    code = main(["traces", "cost", "--json", *ns, "--by", "model", "--database-url", nowhere])
    cost = json.loads(capsys.readouterr().out)
    assert (code, cost["items"][0]["calls"]) == (0, 12)
    # Writing commands ignore it: prune needs the primary, which is nowhere.
    code = main(["prune", "--older-than", "30d", *ns, "--database-url", nowhere])
    assert code != 0
    assert "nowhere" not in capsys.readouterr().err

    with dashboard(redis_url, keys, nowhere, read_url=replica.url) as base:
        status, answer = get_json(f"{base}/api/cost?by=model&range=24h")
    assert status == 200
    assert [(row["key"], row["calls"]) for row in answer["items"]] == [("gpt-4o", 12)]
