"""A consumer group nothing runs any more, with worker processes: forwarding turned on
once and then off leaves the ``langsmith`` group holding the stream until
``fleettrace groups drop`` removes it, and then the stream stays bounded."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.factories import add_traces, numbered_trace
from tests.servers import free_port
from tests.tables import read_table
from tests.waiting import wait_until
from tests.worker_helpers import ROOT, _stop, fleettrace, http_get, trace_rows, worker_env


@pytest.mark.slow
def test_an_abandoned_langsmith_group_holds_the_stream_until_dropped_then_it_stays_bounded(
    redis_url, redis_client, keys, db, tmp_path
) -> None:
    from tests.langsmith_server import LangSmithServer

    env = worker_env(redis_url, db, keys)
    add_traces(redis_client, keys, [numbered_trace(0)])
    # Forwarding on once: both groups made, everything forwarded and stored.
    with LangSmithServer(api_key="k") as server:
        once = fleettrace(
            "worker",
            "--burst",
            "--consumer",
            "once",
            env={
                **env,
                "LANGSMITH_TRACING": "true",
                "LANGSMITH_API_KEY": "k",
                "LANGSMITH_ENDPOINT": server.url,
            },
        )
    assert once.returncode == 0, once.stderr
    assert trace_rows(db) == 1
    # Forwarding off: only persist runs; the langsmith group stays behind.
    port = free_port()
    log_file = tmp_path / "worker.log"
    with log_file.open("w") as log:
        worker = subprocess.Popen(
            [
                *(sys.executable, "-m", "fleettrace_worker.cli", "worker", "--consumer", "w1"),
                *("--block-ms", "100", "--group-max-lag", "50", "--http", f"127.0.0.1:{port}"),
            ],
            env=env,
            stdout=log,
            stderr=log,
            cwd=ROOT,
        )
    try:
        sent = 1
        for _ in range(3):
            for _ in range(40):
                add_traces(redis_client, keys, [numbered_trace(sent)])
                sent += 1
            wait_until(lambda sent=sent: trace_rows(db) == sent, 60, "rows stored")
        wait_until(lambda: "is behind" in log_file.read_text(), 60, "the warning")
        # A trim ran before the warning (same housekeeping round): nothing was removed.
        assert redis_client.xlen(keys.traces) == sent
        warning = log_file.read_text()
        assert f"consumer group langsmith on {keys.traces} is behind: lag 120" in warning
        assert "fleettrace groups drop langsmith" in warning
        metrics = http_get(f"http://127.0.0.1:{port}/metrics")[1]
        behind = f'fleettrace_worker_group_behind{{group="langsmith",stream="{keys.traces}"}}'
        assert f"{behind} 1.0" in metrics
        assert (
            f'fleettrace_worker_group_behind{{group="persist",stream="{keys.traces}"}} 0.0'
            in metrics
        )

        listed = fleettrace("groups", "list", "--max-lag", "50", env=env)
        assert listed.returncode == 0, listed.stderr
        header, rows, _ = read_table(listed.stdout)
        row = next(
            dict(zip(header, r, strict=True)) for r in rows if r[:2] == [keys.traces, "langsmith"]
        )
        assert (row["LAG (entries)"], row["BEHIND"]) == ("120", "yes")
        # The burst worker used it moments ago: dropping asks for --force.
        refused = fleettrace("groups", "drop", "langsmith", "--yes", env=env)
        assert refused.returncode == 1
        assert "stop the workers that run it first, or pass --force" in refused.stdout
        dropped = fleettrace("groups", "drop", "langsmith", "--yes", "--force", env=env)
        assert dropped.returncode == 0, dropped.stderr
        assert f"dropped consumer group 'langsmith' from {keys.traces}" in dropped.stdout

        lengths = []
        for _ in range(8):
            for _ in range(60):
                add_traces(redis_client, keys, [numbered_trace(sent)])
                sent += 1
            wait_until(lambda sent=sent: trace_rows(db) == sent, 60, "rows stored")
            wait_until(lambda: redis_client.xlen(keys.traces) <= 150, 60, "the stream trimmed")
            lengths.append(redis_client.xlen(keys.traces))
        # 480 more entries went through; the stream kept at most a trim's slack of them.
        assert sent == 601
        assert max(lengths) <= 150
        metrics = http_get(f"http://127.0.0.1:{port}/metrics")[1]
        assert behind not in metrics
    finally:
        _stop(worker)
    assert worker.returncode == 0, log_file.read_text()
    assert trace_rows(db) == 601
