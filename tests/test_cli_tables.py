# ruff: noqa: E501  (the snapshots are lines of 200-column tables)
"""The tables and JSON of the commands that read PostgreSQL (traces list, cost, show;
migrate and prune): each table against the JSON of the same call and against the rows
stored, snapshots at 80 and 200 columns, the empty lists, --sort and --utc.
The rendering rules themselves are tests/test_render.py's."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from fleettrace.keys import configured_namespace
from fleettrace.model import LLMTrace
from fleettrace_worker.cli import main
from fleettrace_worker.cli.traces import LIST_COLUMNS, cost_columns
from fleettrace_worker.store import database
from fleettrace_worker.store.repository import LLMTraceRepository
from tests import tables
from tests.factories import llm_trace
from tests.tables import expected_cells, narrow_and_wide, read_table, run, titles
from tests.worker_helpers import migrated as migrate_database

#: The namespace the commands read by default, which the rows are stored under here.
NS = configured_namespace()


def title(text: str, width: int) -> str:
    """A table's title line, centred over a table ``width`` wide."""
    return " " * ((width - len(text)) // 2) + text


#: Fixed ids and times, so the snapshots hold whatever day they run.
T0 = datetime(2026, 12, 1, 9, 30, 15, 250000, tzinfo=UTC)
CALLS: list[dict[str, Any]] = [
    {
        "trace_id": uuid.UUID(int=0xA1),
        "plan_id": "plan-2",
        "actor": "planner",
        "prompt_tokens": 1200,
        "completion_tokens": 340,
        "cost_usd": 0.0123456,
        "latency_ms": 10.703935000037745,
        "started_at": T0,
    },
    {
        "trace_id": uuid.UUID(int=0xA2),
        "plan_id": "plan-10",
        "actor": "coder",
        "model": "claude-x",
        "provider": "anthropic",
        "prompt_tokens": 25_000,
        "completion_tokens": 4_100,
        "cost_usd": None,
        "latency_ms": 1834.5,
        "error": "RateLimitError: slow down, the upstream said, and said it at length",
        "started_at": T0 - timedelta(minutes=5),
    },
    {
        "trace_id": uuid.UUID(int=0xA3),
        "plan_id": "plan-1",
        "actor": "coder",
        "prompt_tokens": None,
        "completion_tokens": None,
        "cost_usd": 0.004,
        "latency_ms": 0.21,
        "started_at": T0 - timedelta(hours=2),
    },
]


@pytest.fixture
def stored(database_url: str) -> tuple[str, list[LLMTrace]]:
    url = migrate_database(database_url)
    traces = [llm_trace(call) for call in CALLS]
    with database.create_pool(url) as pool:
        LLMTraceRepository(pool).store(traces)
    return url, traces


def listing(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    """The list's JSON: exactly the three keys, the namespace the rows are stored under."""
    return tables.listing(capsys, *argv, namespace=NS)


# traces list ------------------------------------------------------------------------


def test_traces_list_table_json_and_database_agree(
    capsys: pytest.CaptureFixture[str], stored: tuple[str, list[LLMTrace]]
) -> None:
    url, _ = stored
    where = ("traces", "list", "--database-url", url)
    items = listing(capsys, *where)["items"]
    header, rows, footer = read_table(run(capsys, *where))
    assert header == titles(LIST_COLUMNS)
    assert rows == expected_cells(LIST_COLUMNS, items)
    assert footer == ["3 traces"]
    with psycopg.connect(url) as conn:
        db = conn.execute(
            "SELECT trace_id, cost_usd, latency_ms, prompt_tokens FROM llm_traces "
            "ORDER BY started_at DESC"
        ).fetchall()
    assert [(uuid.UUID(i["trace_id"]), i["cost_usd"], i["latency_ms"]) for i in items] == [
        (trace_id, None if cost is None else float(cost), latency)
        for trace_id, cost, latency, _ in db
    ]
    # What a person reads: rounded, with units, unknowns said as such.
    first, second, third = (dict(zip(header, row, strict=True)) for row in rows)
    assert (first["COST (USD)"], first["LATENCY (ms)"], first["TOKENS IN"]) == (
        "0.01",
        "10.7",
        "1,200",
    )
    assert (second["COST (USD)"], second["LATENCY (ms)"]) == ("unpriced", "1,830")
    assert (third["COST (USD)"], third["LATENCY (ms)"], third["TOKENS IN"]) == (
        "0.00400",
        "0.210",
        "-",
    )
    assert db[1][1] is None


def test_traces_list_page_footer_counts_every_match(
    capsys: pytest.CaptureFixture[str], stored: tuple[str, list[LLMTrace]]
) -> None:
    url, _ = stored
    page = listing(capsys, "traces", "list", "--limit", "1", "--database-url", url)
    _, rows, footer = read_table(
        run(capsys, "traces", "list", "--limit", "1", "--database-url", url)
    )
    assert len(rows) == 1
    assert footer == [f"showing 1 of 3 traces; more: add --cursor {page['next_cursor']}"]


def test_traces_list_sorts_and_shows_utc(
    capsys: pytest.CaptureFixture[str], stored: tuple[str, list[LLMTrace]]
) -> None:
    url, _ = stored
    where = ("traces", "list", "--database-url", url)
    by_plan = listing(capsys, *where, "--sort", "plan_id")["items"]
    assert [i["plan_id"] for i in by_plan] == ["plan-1", "plan-2", "plan-10"]
    _, rows, _ = read_table(run(capsys, *where, "--sort", "plan_id"))
    assert [row[5] for row in rows] == ["plan-1", "plan-2", "plan-10"]
    by_cost = listing(capsys, *where, "--sort=-cost_usd")["items"]
    assert [i["cost_usd"] for i in by_cost] == [0.0123456, 0.004, None]
    header, rows, _ = read_table(run(capsys, *where, "--utc"))
    assert header[0] == "STARTED (UTC)"
    assert rows[0][0] == "2026-12-01 09:30:15"
    header, rows, _ = read_table(run(capsys, *where))
    assert header[0] == "STARTED (local)"
    local = T0.astimezone().replace(tzinfo=None)
    assert rows[0][0] == local.isoformat(sep=" ", timespec="seconds")


def test_an_unknown_sort_column_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], stored: tuple[str, list[LLMTrace]]
) -> None:
    url, _ = stored
    assert main(["traces", "list", "--sort", "colour", "--database-url", url]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("fleettrace traces: --sort: no column 'colour'; one of: started_at")


def test_traces_list_snapshots_at_80_and_200_columns(
    capsys: pytest.CaptureFixture[str],
    stored: tuple[str, list[LLMTrace]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, _ = stored
    narrow, wide = narrow_and_wide(
        capsys, monkeypatch, "traces", "list", "--utc", "--database-url", url
    )
    assert narrow.splitlines() == [
        title(f"LLM calls in namespace {NS!r}", 74),
        "                                         TOKENS  TOKENS      COST  LATENCY",
        "STARTED (UTC)        TRACE ID  PROVIDER      IN     OUT     (USD)     (ms)",
        "─" * 74,
        "2026-12-01 09:30:15  0000000…  openai     1,200     340      0.01     10.7",
        "2026-12-01 09:25:15  0000000…  anthrop…  25,000   4,100  unpriced    1,830",
        "2026-12-01 07:30:15  0000000…  openai         -       -   0.00400    0.210",
        "left out at this width: MODEL, ACTOR, PLAN, ERROR (--json has them)",
        "3 traces",
    ]
    assert wide.splitlines() == [
        title(f"LLM calls in namespace {NS!r}", 200),
        "STARTED (UTC)        TRACE ID                              PROVIDER   MODEL     ACTOR    PLAN     TOKENS IN  TOKENS OUT  COST (USD)  LATENCY (ms)  ERROR",
        "─" * 200,
        "2026-12-01 09:30:15  00000000-0000-0000-0000-0000000000a1  openai     gpt-4o    planner  plan-2       1,200         340        0.01          10.7  -",
        "2026-12-01 09:25:15  00000000-0000-0000-0000-0000000000a2  anthropic  claude-x  coder    plan-10     25,000       4,100    unpriced         1,830  RateLimitError: slow down, the upstream said, and sa…",
        "2026-12-01 07:30:15  00000000-0000-0000-0000-0000000000a3  openai     gpt-4o    coder    plan-1           -           -     0.00400         0.210  -",
        "3 traces",
    ]


# traces cost ------------------------------------------------------------------------


def test_traces_cost_table_json_and_database_agree(
    capsys: pytest.CaptureFixture[str], stored: tuple[str, list[LLMTrace]]
) -> None:
    url, _ = stored
    where = ("traces", "cost", "--by", "provider,model", "--database-url", url)
    data = listing(capsys, *where)
    assert data["next_cursor"] is None
    columns = cost_columns(["provider", "model"])
    header, rows, footer = read_table(run(capsys, *where))
    assert header == titles(columns)
    assert rows == expected_cells(columns, data["items"])
    assert footer == ["2 groups, 3 calls, 0.02 USD (1 call unpriced)"]
    with psycopg.connect(url) as conn:
        by_model = dict(
            conn.execute("SELECT model, sum(cost_usd) FROM llm_traces GROUP BY model").fetchall()
        )
    assert {i["group"]["model"]: i["cost_usd"] for i in data["items"]} == {
        model: None if cost is None else pytest.approx(float(cost))
        for model, cost in by_model.items()
    }
    sorted_rows = listing(capsys, *where, "--sort", "model")["items"]
    assert [i["group"]["model"] for i in sorted_rows] == ["claude-x", "gpt-4o"]


def test_traces_cost_snapshots_at_80_and_200_columns(
    capsys: pytest.CaptureFixture[str],
    stored: tuple[str, list[LLMTrace]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, _ = stored
    narrow, wide = narrow_and_wide(capsys, monkeypatch, "traces", "cost", "--database-url", url)
    # Ten numbers do not fit 80 columns: whole lines, never a number cut.
    assert narrow.splitlines() == [
        title(f"cost in namespace {NS!r}", 98),
        "                                                                     UNKNOWN",
        "                   PROMPT  COMPLETION     TOTAL      COST  UNPRICED   TOKENS  ERRORS    P50    P95",
        "MODEL     CALLS  (tokens)    (tokens)  (tokens)     (USD)   (calls)  (calls)     (%)   (ms)   (ms)",
        "─" * 98,
        "gpt-4o        2     1,200         340     1,540      0.02         0        1       0   5.46   10.2",
        "claude-x      1    25,000       4,100    29,100  unpriced         1        0     100  1,830  1,830",
        "2 groups, 3 calls, 0.02 USD (1 call unpriced)",
    ]
    assert wide.splitlines() == [
        title(f"cost in namespace {NS!r}", 155),
        "MODEL     CALLS  PROMPT (tokens)  COMPLETION (tokens)  TOTAL (tokens)  COST (USD)  UNPRICED (calls)  UNKNOWN TOKENS (calls)  ERRORS (%)  P50 (ms)  P95 (ms)",
        "─" * 155,
        "gpt-4o        2            1,200                  340           1,540        0.02                 0                       1           0      5.46      10.2",
        "claude-x      1           25,000                4,100          29,100    unpriced                 1                       0         100     1,830     1,830",
        "2 groups, 3 calls, 0.02 USD (1 call unpriced)",
    ]


# traces show ------------------------------------------------------------------------


def test_traces_show_table_and_json_agree(
    capsys: pytest.CaptureFixture[str], stored: tuple[str, list[LLMTrace]]
) -> None:
    url, traces = stored
    where = ("traces", "show", str(traces[1].trace_id), "--database-url", url)
    out = run(capsys, *where, "--json")
    data = json.loads(out)
    assert data["namespace"] == NS
    record = {k: v for k, v in data.items() if k != "namespace"}
    assert LLMTrace.model_validate_json(json.dumps(record)) == traces[1]
    header, rows, _ = read_table(run(capsys, *where))
    assert header == ["FIELD", "VALUE"]
    shown = dict((row[0], row[1] if len(row) > 1 else "") for row in rows)
    # The table ends with the call's place in its plan tree, which the JSON leaves out.
    ancestors = shown.pop("ancestors", None)
    assert (ancestors is not None) == (traces[1].plan_id is not None)
    assert list(shown) == list(data)
    assert shown["cost_usd"] == "unpriced"
    assert shown["latency_ms"] == "1834.5"  # every field exactly as stored
    assert shown["error"] == data["error"]


# the empty lists --------------------------------------------------------------------


@pytest.mark.parametrize(
    "command", [("traces", "list"), ("traces", "cost"), ("traces", "cost", "--by", "plan")]
)
def test_every_list_is_the_one_shape_when_empty(
    capsys: pytest.CaptureFixture[str], database_url: str, command: tuple[str, ...]
) -> None:
    url = migrate_database(database_url)
    assert listing(capsys, *command, "--database-url", url) == {
        "items": [],
        "next_cursor": None,
        "namespace": NS,
    }
    assert run(capsys, *command, "--database-url", url) == f"no traces match in namespace {NS!r}\n"


# migrate and prune ------------------------------------------------------------------


def test_migrate_and_prune_print_one_json_object(
    capsys: pytest.CaptureFixture[str], database_url: str
) -> None:
    first = json.loads(run(capsys, "migrate", "--json", "--database-url", database_url))
    assert first["from_version"] == 0 and first["applied"]
    assert first["redis_library"] == "loaded"
    again = json.loads(
        run(capsys, "migrate", "--json", "--no-redis", "--database-url", database_url)
    )
    assert again == {
        "from_version": first["to_version"],
        "to_version": first["to_version"],
        "applied": [],
        "redis_library": "skipped",
    }
    check = json.loads(run(capsys, "migrate", "--check", "--json", "--database-url", database_url))
    assert check == {"version": first["to_version"]}

    old = [llm_trace(started_at=datetime.now(UTC) - timedelta(days=40)) for _ in range(2)]
    with database.create_pool(database_url) as pool:
        LLMTraceRepository(pool).store([*old, llm_trace()])
    argv = ("prune", "--older-than", "30d", "--database-url", database_url, "--json")
    dry = json.loads(run(capsys, *argv, "--dry-run"))
    assert (dry["dry_run"], dry["traces"], dry["samples"]) == (True, 2, 0)
    done = json.loads(run(capsys, *argv))
    assert (done["dry_run"], done["traces"]) == (False, 2)
    assert datetime.fromisoformat(done["older_than"]) < datetime.now(UTC) - timedelta(days=29)
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM llm_traces").fetchone() == (1,)
