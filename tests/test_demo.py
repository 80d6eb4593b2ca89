"""The demo for real: ``fleettrace demo`` as a process with agent processes, a worker,
the embedded servers or the machine's, and the count that proves every record sent is a
row or a dead letter."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import redis

from fleettrace.keys import EMITTER_RECORDS, Keys
from fleettrace_worker.cli import main
from fleettrace_worker.demo import agents
from fleettrace_worker.embedded import EmbeddedPostgres
from fleettrace_worker.keys import PERSIST_GROUP
from fleettrace_worker.store import database
from fleettrace_worker.store.migrations import migrate
from fleettrace_worker.store.repository import LLMTraceRepository
from tests.emitting import delete_namespace
from tests.factories import llm_trace
from tests.worker_helpers import scalar

pytestmark = pytest.mark.timeout(300)


URL_VARIABLES = ("FLEETTRACE_REDIS_URL", "REDIS_URL", "FLEETTRACE_DATABASE_URL", "DATABASE_URL")


VERDICT = re.compile(
    r"records sent = rows stored \+ dead letters: (\d+) = (\d+) \+ (\d+) \(nothing lost"
)


STORED = re.compile(
    r"rows stored: (\d+) \((\d+) llm_traces \+ (\d+) metric_samples \+ (\d+) tool_calls and plans\)"
)


SENT = re.compile(r"records sent: (\d+) \((\d+) by \d+ agent processes in \d+ plans, (\d+) written")


RUN = re.compile(r"Run (demo-[0-9a-f]+):")


def _demo(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleettrace_worker.cli", "demo", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def _figures(stdout: str, malformed: int) -> tuple[str, int, int, int, int]:
    """(run id, records the emitters sent, traces stored, samples stored, tool call and
    plan record rows stored) from the demo's output, after checking its sums."""
    verdict = VERDICT.search(stdout)
    stored = STORED.search(stdout)
    sent_line = SENT.search(stdout)
    run = RUN.search(stdout)
    assert verdict and stored and sent_line and run, stdout
    sent, rows, dead = map(int, verdict.groups())
    assert rows + dead == sent
    assert dead == (malformed + 1) // 2  # every other handwritten record is invalid
    assert int(stored.group(1)) == rows
    assert int(stored.group(2)) + int(stored.group(3)) + int(stored.group(4)) == rows
    total, by_agents, handwritten = map(int, sent_line.groups())
    assert (total, handwritten) == (sent, malformed)
    assert by_agents + handwritten == sent
    traces, samples, tree = (int(stored.group(n)) for n in (2, 3, 4))
    return run.group(1), by_agents, traces, samples, tree


@pytest.mark.slow
def test_the_demo_runs_on_the_embedded_servers_when_no_url_is_set(tmp_path: Path) -> None:
    env = {name: value for name, value in os.environ.items() if name not in URL_VARIABLES}
    env["FLEETTRACE_DATA_DIR"] = str(tmp_path / "data")
    result = _demo(["--agents", "2", "--plans", "3"], env)
    assert result.returncode == 0, result.stderr
    assert "Starting embedded servers under" in result.stdout
    assert "Traceback" not in result.stderr
    run_id, sent, traces, samples, tree = _figures(result.stdout, malformed=2)
    assert sent + 1 == traces + samples + tree  # one handwritten record stored, one dead
    assert tree >= 2 * 3  # every plan leaves its plan record
    assert traces >= 2 * 3  # every plan makes at least one LLM call
    assert "dead letter: prompt_tokens: Input should be greater than or equal to 0" in (
        result.stdout
    )
    # With no namespace given, the run has one of its own, named after it.
    assert f"Cost by model (stored in PostgreSQL, namespace {run_id!r})" in result.stdout
    # The handwritten record that is stored is of a model without a price.
    [acme] = [line for line in result.stdout.splitlines() if "acme-reasoner-2" in line]
    assert "unpriced" in acme

    # The rows outlive the demo: start the embedded PostgreSQL again and count them.
    server = EmbeddedPostgres(tmp_path / "data")
    try:
        with psycopg.connect(server.url) as conn:
            row = conn.execute(
                "SELECT count(*), count(DISTINCT plan_id) FROM llm_traces WHERE plan_id LIKE %s",
                (f"{run_id}-%",),
            ).fetchone()
    finally:
        server.stop()
    assert row is not None
    assert row[0] == traces
    assert row[1] >= 2 * 3


@pytest.mark.slow
def test_the_demo_uses_the_servers_the_urls_name(
    redis_url: str, database_url: str, keys: Keys, redis_client: redis.Redis, tmp_path: Path
) -> None:
    env = {name: value for name, value in os.environ.items() if name not in URL_VARIABLES}
    env["FLEETTRACE_REDIS_URL"] = redis_url
    env["DATABASE_URL"] = database_url
    env["FLEETTRACE_DATA_DIR"] = str(tmp_path / "unused")
    result = _demo(
        ["--agents", "2", "--plans", "3", "--malformed", "5", "--namespace", keys.namespace],
        env,
    )
    assert result.returncode == 0, result.stderr
    assert "Starting embedded servers" not in result.stdout
    assert not (tmp_path / "unused").exists()
    run_id, sent, traces, samples, tree = _figures(result.stdout, malformed=5)
    letters = redis_client.xrange(keys.dead_letters(PERSIST_GROUP))
    assert len(letters) == 3
    assert all(b"prompt_tokens" in fields[b"reason"] for _, fields in letters)
    with psycopg.connect(database_url) as conn:
        stored_traces = conn.execute(
            "SELECT count(*) FROM llm_traces WHERE plan_id LIKE %s", (f"{run_id}-%",)
        ).fetchone()
        stored_samples = conn.execute("SELECT count(*) FROM metric_samples").fetchone()
        stored_tree = conn.execute(
            "SELECT (SELECT count(*) FROM tool_calls WHERE plan_id LIKE %s)"
            " + (SELECT count(*) FROM plans WHERE plan_id LIKE %s)",
            (f"{run_id}-%", f"{run_id}-%"),
        ).fetchone()
        unpriced = conn.execute(
            "SELECT count(*) FROM llm_traces WHERE cost_usd IS NULL AND model = 'acme-reasoner-2'"
        ).fetchone()
        failed = conn.execute(
            "SELECT count(*) FROM llm_traces WHERE error LIKE 'RateLimitError: %'"
        ).fetchone()
        retried = conn.execute("SELECT count(*) FROM llm_traces WHERE retry_count > 0").fetchone()
        # What wrap_openai filled in from the client and the local server's answers.
        integration = conn.execute(
            "SELECT count(*) FILTER (WHERE streaming), count(*) FILTER (WHERE NOT streaming),"
            " count(DISTINCT prompt_tokens), count(*) FILTER (WHERE cache_read_tokens > 0),"
            " count(*) FILTER (WHERE cardinality(tool_calls) > 0),"
            " count(*) FILTER (WHERE context_hash IS NULL),"
            " count(*) FILTER (WHERE error IS NOT NULL AND retry_count <> %s),"
            " count(*) FILTER (WHERE provider = 'anthropic' AND model NOT LIKE 'claude-%%')"
            " FROM llm_traces WHERE plan_id LIKE %s AND plan_id NOT LIKE %s",
            (agents.MAX_RETRIES, f"{run_id}-%", f"{run_id}-handwritten"),
        ).fetchone()
    assert stored_traces == (traces,)
    assert stored_samples == (samples,)
    assert stored_tree == (tree,)
    assert unpriced is not None and unpriced[0] > 0
    assert failed is not None and failed[0] > 0
    assert retried is not None and retried[0] > 0
    assert integration is not None
    streamed, plain, token_counts, cached, with_tools, unhashed, odd_errors, odd = integration
    assert streamed > 0 and plain > 0
    assert token_counts > 1  # varied, as the requests were
    assert cached > 0 and with_tools > 0
    assert (unhashed, odd_errors, odd) == (0, 0, 0)  # a failed call gave up after its retries
    # What the emitters put into this namespace is exactly what the demo calls sent.
    assert int(redis_client.hget(keys.emitter, EMITTER_RECORDS) or 0) == sent


@pytest.mark.slow
def test_a_demo_and_another_namespace_never_see_each_others_rows(
    redis_url: str, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The demo's default namespace is the run's own; its summary leaves out another
    fleet's calls of the same minutes, and that fleet's summary leaves out the demo's."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in URL_VARIABLES and name != "FLEETTRACE_NAMESPACE"
    }
    env["FLEETTRACE_REDIS_URL"] = redis_url
    env["FLEETTRACE_DATABASE_URL"] = database_url
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrate(conn)
    fleet = Keys("a-real-fleet")
    with database.create_pool(database_url) as pool:
        LLMTraceRepository(pool).store(
            [llm_trace(model="the-fleets-model", cost_usd=7.0) for _ in range(3)],
            namespace=fleet.namespace,
        )
    result = _demo(["--agents", "1", "--plans", "2", "--malformed", "0"], env)
    assert result.returncode == 0, result.stderr
    run_id = RUN.search(result.stdout)
    assert run_id, result.stdout
    demo_ns = run_id[1]
    assert f"namespace {demo_ns!r}" in result.stdout
    assert "the-fleets-model" not in result.stdout
    with psycopg.connect(database_url) as conn:
        stored = dict(
            conn.execute("SELECT namespace, count(*) FROM llm_traces GROUP BY 1").fetchall()
        )
    assert set(stored) == {fleet.namespace, demo_ns} and stored[fleet.namespace] == 3

    code = main(["traces", "cost", "--json", "--by", "model", "--database-url", database_url,
                 "--namespace", fleet.namespace])  # fmt: skip
    theirs = json.loads(capsys.readouterr().out)
    assert code == 0 and theirs["namespace"] == fleet.namespace
    assert [(row["group"]["model"], row["calls"]) for row in theirs["items"]] == [
        ("the-fleets-model", 3)
    ]
    # The demo leaves its keys for the user to look at; the test removes them.
    delete_namespace(redis_url, Keys(demo_ns))


@pytest.mark.slow
def test_demo_json_is_the_report_alone_and_agrees_with_the_database(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    env = {name: value for name, value in os.environ.items() if name not in URL_VARIABLES}
    env["FLEETTRACE_REDIS_URL"] = redis_url
    env["FLEETTRACE_DATABASE_URL"] = database_url
    env["FLEETTRACE_DATA_DIR"] = str(tmp_path / "unused")
    ns = f"demo-json-{os.getpid()}"
    result = _demo(["--agents", "1", "--plans", "2", "--namespace", ns, "--json"], env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # stdout is one JSON object and nothing else
    assert "agents running" in result.stderr  # the progress goes to stderr
    assert "Cost by model" not in result.stderr + result.stdout  # the report is the JSON
    assert report["namespace"] == ns and report["nothing_lost"] is True
    assert report["records_sent"] == report["rows_stored"] + report["dead_letters"]
    assert report["written_past_emitter"] == 2 and report["dead_letters"] == 1
    traces = scalar(database_url, f"SELECT count(*) FROM llm_traces WHERE namespace = '{ns}'")
    samples = scalar(database_url, f"SELECT count(*) FROM metric_samples WHERE namespace = '{ns}'")
    assert (report["traces_stored"], report["samples_stored"]) == (traces, samples)
    assert report["rows_stored"] == traces + samples + report["tree_rows_stored"]
    items = report["cost_by_model"]["items"]
    assert report["cost_by_model"]["next_cursor"] is None
    assert sum(item["calls"] for item in items) == traces
    delete_namespace(redis_url, Keys(ns))


@pytest.mark.slow
def test_records_nobody_stores_make_the_demo_fail(
    redis_url: str, database_url: str, keys: Keys
) -> None:
    env = {name: value for name, value in os.environ.items() if name not in URL_VARIABLES}
    env.update(REDIS_URL=redis_url, FLEETTRACE_DATABASE_URL=database_url)
    result = _demo(
        [
            "--agents",
            "1",
            "--plans",
            "1",
            "--no-worker",
            "--malformed",
            "0",
            "--drain-timeout",
            "0.5",
            "--namespace",
            keys.namespace,
        ],
        env,
    )
    assert result.returncode == 1
    assert re.search(r"records sent = rows stored \+ dead letters: (\d+) != 0 \+ 0", result.stdout)
    assert re.search(r"\d+ records are neither rows nor dead letters", result.stdout)
    assert re.search(
        r"records sent: (\d+) \(\1 by 1 agent processes in 1 plans, 0 written", result.stdout
    )


@pytest.mark.slow
def test_ctrl_c_stops_the_fleet_and_the_servers_without_a_traceback(tmp_path: Path) -> None:
    env = {name: value for name, value in os.environ.items() if name not in URL_VARIABLES}
    env["FLEETTRACE_DATA_DIR"] = str(tmp_path / "data")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleettrace_worker.cli", "demo", "--seconds", "120"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal would make it
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # bounded by the test's timeout
            if line.startswith("agents running"):
                break
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert proc.returncode == 130
    assert "Traceback" not in stderr
    assert "KeyboardInterrupt" not in stderr
    assert not (tmp_path / "data" / "redis" / "server.json").exists()  # removed once stopped
    assert not (tmp_path / "data" / "postgres" / "postmaster.pid").exists()
