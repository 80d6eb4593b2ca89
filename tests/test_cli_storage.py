"""``fleettrace migrate``, ``prune`` and ``traces`` run for real against the machine's
PostgreSQL: what they print, what they change, and their exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from fleettrace.keys import configured_namespace
from fleettrace.model import LLMTrace
from fleettrace_worker.cli import main
from fleettrace_worker.store import database, migrations
from fleettrace_worker.store.repository import LLMTraceRepository
from tests.factories import llm_trace
from tests.servers import free_port
from tests.tables import read_table


@pytest.fixture
def migrated(database_url: str) -> str:
    with psycopg.connect(database_url) as conn:
        migrations.migrate(conn)
    return database_url


#: The namespace the commands work within by default, and rows are stored under here.
NAMESPACE = configured_namespace()
SCOPE = f"namespace {NAMESPACE!r}"


def _record(item: dict[str, object]) -> LLMTrace:
    """The record of one trace of --json output, which also says its namespace."""
    assert item["namespace"] == NAMESPACE
    fields = {k: v for k, v in item.items() if k != "namespace"}
    return LLMTrace.model_validate_json(json.dumps(fields))


def _store(url: str, traces: list[LLMTrace]) -> None:
    with database.create_pool(url) as pool:
        LLMTraceRepository(pool).store(traces)


#: The calls these tests store (started now unless a test says when).
STORED_CALL = {
    "prompt_tokens": 100,
    "completion_tokens": 20,
    "cost_usd": 0.5,
    "latency_ms": 100.0,
}


@pytest.fixture
def fleet(migrated: str) -> Iterator[list[LLMTrace]]:
    now = datetime.now(UTC)
    traces = [
        llm_trace(
            STORED_CALL,
            model="gpt-4o",
            actor="planner",
            plan_id="plan-a",
            cost_usd=1.25,
            latency_ms=100.0,
            started_at=now - timedelta(minutes=1),
        ),
        llm_trace(
            STORED_CALL,
            model="gpt-4o",
            actor="coder",
            plan_id="plan-a",
            cost_usd=0.75,
            latency_ms=300.0,
            error="Timeout: upstream\nsecond line",
            started_at=now - timedelta(minutes=2),
        ),
        llm_trace(
            STORED_CALL,
            provider="anthropic",
            model="claude-x",
            actor="coder",
            plan_id="plan-b",
            cost_usd=None,
            latency_ms=50.0,
            tool_calls=["search", "read"],
            started_at=now - timedelta(hours=3),
        ),
    ]
    _store(migrated, traces)
    yield traces


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_clean_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# migrate ---------------------------------------------------------------------------


def test_migrate_then_migrate_again(capsys: pytest.CaptureFixture[str], database_url: str) -> None:
    latest = migrations.latest_version()
    code, out, _ = run(capsys, "migrate", "--database-url", database_url)
    assert code == 0
    assert out.splitlines() == [
        f"migrated schema from version 0 to {latest} (applied "
        + ", ".join(f"{m.version:04d}_{m.name}" for m in migrations.available())
        + ")",
        "loaded the batch function library into Redis",
    ]

    code, out, _ = run(capsys, "migrate", "--no-redis", "--database-url", database_url)
    assert (code, out.strip()) == (0, f"schema already at version {latest}; nothing to apply")

    code, out, _ = run(capsys, "migrate", "--check", "--database-url", database_url)
    assert (code, out.strip()) == (0, f"schema is current at version {latest}")


def test_migrate_says_in_one_line_when_redis_cannot_take_the_library(
    capsys: pytest.CaptureFixture[str], database_url: str
) -> None:
    away = f"redis://127.0.0.1:{free_port()}/0"
    code, out, err = run(capsys, "migrate", "--database-url", database_url, "--redis-url", away)
    assert code == 0 and out.startswith("migrated schema from version 0")
    assert err.strip().splitlines() == [
        f"could not load the batch function library into Redis at {away}: ConnectionError; "
        "every worker loads it at start"
    ]


def test_migrate_reads_the_url_from_the_environment(
    capsys: pytest.CaptureFixture[str], database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETTRACE_DATABASE_URL", database_url)
    code, out, _ = run(capsys, "migrate")
    assert code == 0 and out.startswith("migrated schema from version 0")
    with psycopg.connect(database_url) as conn:
        assert migrations.current_version(conn) == migrations.latest_version()


def test_migrate_check_on_an_empty_database_fails(
    capsys: pytest.CaptureFixture[str], database_url: str
) -> None:
    code, out, err = run(capsys, "migrate", "--check", "--database-url", database_url)
    assert code == 1 and out == ""
    assert "no fleettrace schema" in _one_clean_line(err)
    assert _one_clean_line(err).startswith("fleettrace migrate: ")


def test_migrate_refuses_a_newer_schema_naming_it(
    capsys: pytest.CaptureFixture[str], migrated: str
) -> None:
    with psycopg.connect(migrated) as conn:
        conn.execute(f"INSERT INTO {migrations.VERSION_TABLE} VALUES (99, 'future', now())")
    code, _, err = run(capsys, "migrate", "--database-url", migrated)
    assert code == 1
    assert "version 99, newer than this code" in _one_clean_line(err)


@pytest.mark.parametrize(
    ("url", "code", "message"),
    [
        (
            f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/postgres",
            1,
            "is unavailable: connection to server",
        ),
        ("postgresql://nobody:hunter2@127.0.0.1:5432/postgres", 2, 'role "nobody" does not'),
        ("mysql://root:hunter2@127.0.0.1/x", 2, "must start with postgresql://"),
    ],
)
@pytest.mark.parametrize(
    "command",
    [
        ["migrate"],
        ["prune", "--older-than", "30d"],
        ["traces", "list"],
        ["traces", "show", str(uuid.UUID(int=1))],
        ["traces", "cost"],
    ],
)
def test_database_errors_are_one_line_without_the_password(
    capsys: pytest.CaptureFixture[str], command: list[str], url: str, code: int, message: str
) -> None:
    got, out, err = run(capsys, *command, "--database-url", url)
    assert got == code and out == ""
    line = _one_clean_line(err)
    assert line.startswith(f"fleettrace {command[0]}: ")
    assert message in line
    assert "hunter2" not in line


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for command in (
        ["migrate"],
        ["prune"],
        ["traces"],
        ["traces", "list"],
        ["traces", "show"],
        ["traces", "cost"],
    ):
        with pytest.raises(SystemExit) as exit_:
            main([*command, "--help"])
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: fleettrace {' '.join(command)}")
        assert "--database-url" in out or command == ["traces"]


# prune -----------------------------------------------------------------------------


def test_prune_removes_old_rows_and_says_how_many(
    capsys: pytest.CaptureFixture[str], migrated: str
) -> None:
    now = datetime.now(UTC)
    old = [llm_trace(STORED_CALL, started_at=now - timedelta(days=31 + i)) for i in range(4)]
    recent = [llm_trace(STORED_CALL, started_at=now - timedelta(days=29)), llm_trace(STORED_CALL)]
    _store(migrated, old + recent)

    code, out, _ = run(
        capsys, "prune", "--older-than", "30d", "--dry-run", "--database-url", migrated
    )
    assert code == 0
    assert out.startswith("would remove 4 traces and 0 metric samples older than ")

    code, out, _ = run(
        capsys, "prune", "--older-than", "30d", "--batch-rows", "3", "--database-url", migrated
    )
    assert code == 0
    assert out.startswith("removed 4 traces and 0 metric samples older than ")
    with psycopg.connect(migrated) as conn:
        left = {row[0] for row in conn.execute("SELECT trace_id FROM llm_traces")}
    assert left == {t.trace_id for t in recent}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--older-than", "30x"], "'30x' is not a duration: use a whole number and one of s"),
        (["--older-than", "1.5d"], "'1.5d' is not a duration"),
    ],
)
def test_prune_refuses_a_bad_duration(
    capsys: pytest.CaptureFixture[str], migrated: str, argv: list[str], message: str
) -> None:
    code, out, err = run(capsys, "prune", *argv, "--database-url", migrated)
    assert code == 2 and out == ""
    assert message in _one_clean_line(err)


@pytest.mark.parametrize("value", ["0", "many"])
def test_prune_refuses_a_bad_batch_size(capsys: pytest.CaptureFixture[str], value: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["prune", "--older-than", "1d", "--batch-rows", value])
    assert exit_.value.code == 2
    assert "--batch-rows" in capsys.readouterr().err


# traces ----------------------------------------------------------------------------


def test_traces_list_json_has_every_field(
    capsys: pytest.CaptureFixture[str], fleet: list[LLMTrace], migrated: str
) -> None:
    code, out, _ = run(capsys, "traces", "list", "--json", "--database-url", migrated)
    assert code == 0
    data = json.loads(out)
    assert data["next_cursor"] is None and data["namespace"] == NAMESPACE
    assert [_record(item) for item in data["items"]] == fleet
    assert list(data["items"][0]) == [*LLMTrace.model_fields, "namespace"]


def test_traces_list_pages_with_the_cursor(
    capsys: pytest.CaptureFixture[str], fleet: list[LLMTrace], migrated: str
) -> None:
    code, out, _ = run(
        capsys, "traces", "list", "--json", "--limit", "2", "--database-url", migrated
    )
    first = json.loads(out)
    assert code == 0 and len(first["items"]) == 2 and first["next_cursor"]

    code, out, _ = run(capsys, "traces", "list", "--limit", "2", "--database-url", migrated)
    assert out.strip().splitlines()[-1] == (
        f"showing 2 of 3 traces; more: add --cursor {first['next_cursor']}"
    )

    code, out, _ = run(
        capsys,
        "traces",
        "list",
        "--json",
        "--limit",
        "2",
        "--cursor",
        first["next_cursor"],
        "--database-url",
        migrated,
    )
    second = json.loads(out)
    assert [item["trace_id"] for item in first["items"] + second["items"]] == [
        str(t.trace_id) for t in fleet
    ]
    assert second["next_cursor"] is None


def test_traces_list_table_for_people(
    capsys: pytest.CaptureFixture[str], fleet: list[LLMTrace], migrated: str
) -> None:
    code, out, _ = run(capsys, "traces", "list", "--utc", "--database-url", migrated)
    assert code == 0
    header, rows, footer = read_table(out)
    assert header[:2] == ["STARTED (UTC)", "TRACE ID"]
    assert "COST (USD)" in header and "LATENCY (ms)" in header
    assert [row[1] for row in rows] == [str(t.trace_id) for t in fleet]
    assert rows[0][header.index("COST (USD)")] == "1.25"
    assert rows[1][-1] == "Timeout: upstream second line"
    # the unpriced call's cost is unknown, not 0
    assert rows[2][header.index("COST (USD)")] == "unpriced"
    assert footer == ["3 traces"]
    # The title names the namespace; columns line up under the header.
    title, *lines = out.splitlines()
    assert title.strip() == f"LLM calls in {SCOPE}"
    column = lines[0].index("TRACE ID")
    assert all(
        line[column : column + 36] == str(t.trace_id)
        for line, t in zip(lines[2:5], fleet, strict=True)
    )


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--provider", "anthropic"], [2]),
        (["--model", "gpt-4o"], [0, 1]),
        (["--actor", "coder"], [1, 2]),
        (["--plan", "plan-a"], [0, 1]),
        (["--errors"], [1]),
        (["--since", "1h"], [0, 1]),
        (["--until", "1h"], [2]),
        (["--since", "1h", "--actor", "planner"], [0]),
        (["--provider", "nobody"], []),
    ],
)
def test_traces_list_filters(
    capsys: pytest.CaptureFixture[str],
    fleet: list[LLMTrace],
    migrated: str,
    argv: list[str],
    expected: list[int],
) -> None:
    code, out, _ = run(capsys, "traces", "list", "--json", *argv, "--database-url", migrated)
    assert code == 0
    assert [item["trace_id"] for item in json.loads(out)["items"]] == [
        str(fleet[i].trace_id) for i in expected
    ]


def test_traces_list_of_nothing_says_so(capsys: pytest.CaptureFixture[str], migrated: str) -> None:
    nothing = f"no traces match in {SCOPE}\n"
    assert run(capsys, "traces", "list", "--database-url", migrated)[1] == nothing
    assert run(capsys, "traces", "cost", "--database-url", migrated)[1] == nothing


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["list", "--cursor", "garbage"], "cursor 'garbage' is not one this command returned"),
        (["list", "--since", "last tuesday"], "is neither a duration"),
        (["show", "not-a-uuid"], "'not-a-uuid' is not a trace id"),
        (["cost", "--by", "model,colour"], "--by: group by must be distinct names among"),
        (["cost", "--by", "model,model"], "--by: group by must be distinct names among"),
    ],
)
def test_traces_refuses_bad_input_in_one_line(
    capsys: pytest.CaptureFixture[str], migrated: str, argv: list[str], message: str
) -> None:
    code, out, err = run(capsys, "traces", *argv, "--database-url", migrated)
    assert code == 2 and out == ""
    assert message in _one_clean_line(err)


@pytest.mark.parametrize("limit", ["0", "10001", "ten"])
def test_traces_list_refuses_a_bad_limit(capsys: pytest.CaptureFixture[str], limit: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["traces", "list", "--limit", limit])
    assert exit_.value.code == 2
    assert "--limit" in capsys.readouterr().err


def test_traces_show(
    capsys: pytest.CaptureFixture[str], fleet: list[LLMTrace], migrated: str
) -> None:
    wanted = fleet[2]
    code, out, _ = run(
        capsys, "traces", "show", str(wanted.trace_id), "--json", "--database-url", migrated
    )
    assert code == 0
    assert _record(json.loads(out)) == wanted

    code, out, _ = run(capsys, "traces", "show", str(fleet[1].trace_id), "--database-url", migrated)
    assert code == 0
    fields = dict(line.split(None, 1) for line in out.strip().splitlines()[2:])
    assert fields["trace_id"] == str(fleet[1].trace_id)
    assert fields["namespace"] == NAMESPACE
    assert fields["error"] == "Timeout: upstream\\nsecond line"
    assert fields["tool_calls"] == "-"
    assert fields["decision_id"] == "-"

    code, out, _ = run(capsys, "traces", "show", str(wanted.trace_id), "--database-url", migrated)
    fields = dict(line.split(None, 1) for line in out.strip().splitlines()[2:])
    assert fields["tool_calls"] == "search, read"
    assert fields["cost_usd"] == "unpriced"


def test_traces_show_of_an_unknown_id(capsys: pytest.CaptureFixture[str], migrated: str) -> None:
    missing = uuid.uuid4()
    code, out, err = run(capsys, "traces", "show", str(missing), "--database-url", migrated)
    assert code == 1 and out == ""
    assert _one_clean_line(err) == f"fleettrace traces: no trace with id {missing} in {SCOPE}"


def test_traces_cost_json(
    capsys: pytest.CaptureFixture[str], fleet: list[LLMTrace], migrated: str
) -> None:
    code, out, _ = run(
        capsys, "traces", "cost", "--by", "provider,model", "--json", "--database-url", migrated
    )
    assert code == 0
    listing = json.loads(out)
    assert (listing["next_cursor"], listing["namespace"]) == (None, NAMESPACE)
    assert listing["items"] == [
        {
            "group": {"provider": "openai", "model": "gpt-4o"},
            "calls": 2,
            "prompt_tokens": 200,
            "completion_tokens": 40,
            "total_tokens": 240,
            "cache_read_tokens": 0,
            "cache_write_tokens": 0,
            "reasoning_tokens": 0,
            "unknown_token_calls": 0,
            "cost_usd": 2.0,
            "unpriced_calls": 0,
            "error_rate": 0.5,
            "latency_p50_ms": 200.0,
            "latency_p95_ms": 290.0,
        },
        {
            "group": {"provider": "anthropic", "model": "claude-x"},
            "calls": 1,
            "prompt_tokens": 100,
            "completion_tokens": 20,
            "total_tokens": 120,
            "cache_read_tokens": 0,
            "cache_write_tokens": 0,
            "reasoning_tokens": 0,
            "unknown_token_calls": 0,
            "cost_usd": None,  # nothing priced: unknown, not 0.0
            "unpriced_calls": 1,
            "error_rate": 0.0,
            "latency_p50_ms": 50.0,
            "latency_p95_ms": 50.0,
        },
    ]


def test_traces_cost_table(
    capsys: pytest.CaptureFixture[str], fleet: list[LLMTrace], migrated: str
) -> None:
    code, out, _ = run(
        capsys, "traces", "cost", "--by", "actor,day", "--errors", "--database-url", migrated
    )
    assert code == 0
    header, rows, footer = read_table(out)
    assert header == [
        "ACTOR", "DAY", "CALLS", "PROMPT (tokens)", "COMPLETION (tokens)", "TOTAL (tokens)",
        "COST (USD)", "UNPRICED (calls)", "UNKNOWN TOKENS (calls)", "ERRORS (%)", "P50 (ms)",
        "P95 (ms)",
    ]  # fmt: skip
    day = fleet[1].started_at.date().isoformat()
    assert rows == [
        ["coder", day, "1", "100", "20", "120", "0.75", "0", "0", "100", "300", "300"]
    ]  # fmt: skip
    assert footer == ["1 group, 1 call, 0.75 USD"]

    code, out, _ = run(capsys, "traces", "cost", "--by", "", "--database-url", migrated)
    header, [total], footer = read_table(out)
    assert header[0] == "CALLS" and total[:2] == ["3", "300"]
    assert footer == ["1 group, 3 calls, 2.00 USD (1 call unpriced)"]


# the console script ----------------------------------------------------------------


def _console_script() -> str:
    script = Path(sys.executable).with_name("fleettrace")
    assert script.exists(), "the fleettrace console script is not installed"
    return str(script)


@pytest.mark.slow
def test_the_console_script_runs_end_to_end(database_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("DATABASE_URL")}
    done = subprocess.run(
        [_console_script(), "migrate", "--database-url", database_url],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("migrated schema from version 0")

    trace = llm_trace(STORED_CALL)
    _store(database_url, [trace])
    done = subprocess.run(
        [_console_script(), "traces", "show", str(trace.trace_id), "--json"],
        capture_output=True, text=True, timeout=60, check=False,
        env={**env, "FLEETTRACE_DATABASE_URL": database_url},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert _record(json.loads(done.stdout)) == trace


def test_the_console_script_reports_a_refused_connection_without_a_traceback() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    done = subprocess.run(
        [_console_script(), "traces", "list", "--database-url", url],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("fleettrace traces: PostgreSQL at postgres@127.0.0.1:")
    assert len(done.stderr.strip().splitlines()) == 1


def test_traces_list_shortens_a_long_error_to_the_terminal(
    capsys: pytest.CaptureFixture[str], migrated: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    long_error = "ContextWindowExceeded: " + "x" * 200
    trace = llm_trace(STORED_CALL, error=long_error)
    _store(migrated, [trace])
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run(capsys, "traces", "list", "--database-url", migrated)
    assert code == 0
    row = out.splitlines()[3]  # under the title, the header and its rule
    assert len(row) == 200
    assert row.endswith("…") and "ContextWindowExceeded: xxx" in row
    assert str(trace.trace_id) in row
    code, out, _ = run(capsys, "traces", "show", str(trace.trace_id), "--database-url", migrated)
    assert long_error not in out  # the table fits 200 columns here too
    monkeypatch.delenv("COLUMNS")
    code, out, _ = run(capsys, "traces", "show", str(trace.trace_id), "--database-url", migrated)
    assert long_error in out  # into a pipe: whole lines


@pytest.mark.parametrize(
    "command",
    [
        ["prune", "--older-than", "30d"],
        ["traces", "list"],
        ["traces", "show", str(uuid.UUID(int=1))],
        ["traces", "cost"],
    ],
)
def test_commands_on_a_database_without_the_schema_say_there_is_no_data_and_where(
    capsys: pytest.CaptureFixture[str], database_url: str, command: list[str]
) -> None:
    # Not "run fleettrace migrate": a reader pointed at the wrong database should not be
    # told to put tables into it.
    parts = urlsplit(database_url)
    user, host = parts.username or "postgres", parts.netloc.rpartition("@")[2]
    with_password = urlunsplit(parts._replace(netloc=f"{user}:hunter2@{host}"))
    code, out, err = run(capsys, *command, "--database-url", with_password)
    assert code == 1 and out == ""
    line = _one_clean_line(err)
    shown = urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    assert line.startswith(f"fleettrace {command[0]}: no fleettrace data here: {shown} ")
    assert "hunter2" not in line and "migrate" not in line


def test_traces_cost_table_shows_a_wholly_unpriced_group_as_unpriced(
    capsys: pytest.CaptureFixture[str], fleet: list[LLMTrace], migrated: str
) -> None:
    code, out, _ = run(capsys, "traces", "cost", "--by", "provider", "--database-url", migrated)
    assert code == 0
    header, rows, _ = read_table(out)
    by_provider = {row[0]: dict(zip(header, row, strict=True)) for row in rows}
    figures = ("COST (USD)", "UNPRICED (calls)")
    assert [by_provider["openai"][name] for name in figures] == ["2.00", "0"]
    assert [by_provider["anthropic"][name] for name in figures] == ["unpriced", "1"]


def test_traces_cost_sums_token_details_and_counts_unknown_usage_beside_them(
    capsys: pytest.CaptureFixture[str], migrated: str
) -> None:
    _store(
        migrated,
        [
            llm_trace(
                STORED_CALL, prompt_tokens=10_000, cache_read_tokens=9_000, completion_tokens=100
            ),
            llm_trace(
                STORED_CALL,
                prompt_tokens=2_000,
                cache_write_tokens=1_500,
                completion_tokens=300,
                reasoning_tokens=200,
            ),
            # No usage reported: left out of the token sums, counted as unknown.
            llm_trace(STORED_CALL, prompt_tokens=None, completion_tokens=None, cost_usd=None),
            llm_trace(
                STORED_CALL,
                prompt_tokens=50,
                completion_tokens=None,
                cache_read_tokens=7,
                cost_usd=None,
            ),
        ],
    )
    code, out, _ = run(capsys, "traces", "cost", "--json", "--database-url", migrated)
    assert code == 0
    [row] = json.loads(out)["items"]
    assert {k: row[k] for k in ("calls", "prompt_tokens", "completion_tokens", "total_tokens")} == {
        "calls": 4,
        "prompt_tokens": 12_000,
        "completion_tokens": 400,
        "total_tokens": 12_400,
    }
    assert (row["cache_read_tokens"], row["cache_write_tokens"], row["reasoning_tokens"]) == (
        9_000,
        1_500,
        200,
    )
    assert (row["unknown_token_calls"], row["unpriced_calls"], row["cost_usd"]) == (2, 2, 1.0)
    code, out, _ = run(capsys, "traces", "list", "--database-url", migrated)
    header, rows, _ = read_table(out)
    shown = [dict(zip(header, row, strict=True)) for row in rows]
    assert sorted((r["TOKENS IN"], r["TOKENS OUT"], r["COST (USD)"]) for r in shown) == [
        ("-", "-", "unpriced"),
        ("10,000", "100", "0.50"),
        ("2,000", "300", "0.50"),
        ("50", "-", "unpriced"),
    ]
    code, out, _ = run(capsys, "traces", "list", "--json", "--database-url", migrated)
    stored = {(t["prompt_tokens"], t["completion_tokens"]) for t in json.loads(out)["items"]}
    assert stored == {(10_000, 100), (2_000, 300), (None, None), (50, None)}
