"""``fleettrace traces`` (``list``, ``show``, ``cost``) run for real against the
machine's PostgreSQL: what it prints and its exit codes."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from fleettrace.model import LLMTrace
from fleettrace_worker.cli import main
from tests.factories import STORED_CALL, llm_trace
from tests.tables import read_table
from tests.worker_helpers import NAMESPACE, _one_clean_line, _record, _store, run

SCOPE = f"namespace {NAMESPACE!r}"


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
