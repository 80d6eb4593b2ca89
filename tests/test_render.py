"""The one way the CLI prints: values, order, width, times, colour and the JSON shape
(fleettrace_worker.cli.render). The commands' own tests check each table against its
JSON and the database."""

from __future__ import annotations

import argparse
import io
import json
from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType

import pytest
from rich.console import Console

from fleettrace.errors import ConfigurationError
from fleettrace_worker.cli import render
from fleettrace_worker.cli.render import Column, Kind

COLUMNS = (
    Column("plan", "PLAN", Kind.ID),
    Column("note", "NOTE"),
    Column("latency_ms", "LATENCY", Kind.DURATION, "ms"),
    Column("cost_usd", "COST", Kind.USD, "USD"),
    Column("calls", "CALLS", Kind.COUNT),
)


def _console(width: int, **kwargs: object) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=width, highlight=False, markup=False, **kwargs), buffer  # type: ignore[arg-type]


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    render.add_output_options(parser, jsonl=True)
    return parser.parse_args(argv)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (10.703935000037745, "10.7"),
        (0.000123456, "0.000123"),
        (1234.5, "1,230"),
        (999.6, "1,000"),
        (9.996, "10.0"),
        (0.21, "0.210"),
        (0, "0"),
        (-5.4321, "-5.43"),
        (123456789.0, "123,000,000"),
    ],
)
def test_durations_show_three_significant_digits(value: float, shown: str) -> None:
    assert render.format_value(value, Kind.DURATION) == shown


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (None, "unpriced"),
        (0.0, "0.00"),
        (12.345, "12.35"),
        (1234.5, "1,234.50"),
        (0.01, "0.01"),
        (0.00123456, "0.00123"),
        (0.0000004, "0.000000400"),
    ],
)
def test_dollars_show_cents_unless_tiny_and_unpriced_for_unknown(
    value: float | None, shown: str
) -> None:
    assert render.format_value(value, Kind.USD) == shown


def test_counts_numbers_percent_and_unknowns() -> None:
    assert render.format_value(2505, Kind.COUNT) == "2,505"
    assert render.format_value(106.0, Kind.NUMBER) == "106"
    assert render.format_value(106.25, Kind.NUMBER) == "106"
    assert render.format_value(0.025, Kind.PERCENT) == "2.50"
    assert render.format_value(None, Kind.COUNT) == "-"
    assert render.format_value(None, Kind.TEXT) == "-"
    assert render.format_value("line\nbreak\x1b[31m", Kind.TEXT) == "line break [31m"
    assert render.format_value({"tool": "x", "n": 1}, Kind.TEXT) == "tool=x,n=1"
    assert render.format_value(True, Kind.TEXT) == "yes"


def test_times_are_local_iso_or_utc() -> None:
    moment = datetime(2026, 12, 3, 13, 20, 43, 123456, tzinfo=UTC)
    assert render.format_value(moment, Kind.TIME, utc=True) == "2026-12-03 13:20:43"
    assert render.format_value(moment.isoformat(), Kind.TIME, utc=True) == "2026-12-03 13:20:43"
    local = moment.astimezone().replace(tzinfo=None)
    assert render.format_value(moment, Kind.TIME) == local.isoformat(sep=" ", timespec="seconds")
    plus_two = moment.astimezone(timezone(timedelta(hours=2)))
    assert render.format_value(plus_two, Kind.TIME, utc=True) == "2026-12-03 13:20:43"


def test_time_headers_say_which_clock() -> None:
    started = Column("started_at", "STARTED", Kind.TIME)
    assert (started.title(), started.title(utc=True)) == ("STARTED (local)", "STARTED (UTC)")
    assert COLUMNS[2].title() == "LATENCY (ms)"
    assert Column("error_rate", "ERRORS", Kind.PERCENT).title() == "ERRORS (%)"


def test_natural_sort_and_sort_by_a_column() -> None:
    items = [
        {"plan": "plan-10", "latency_ms": 5.0, "cost_usd": None},
        {"plan": "plan-2", "latency_ms": 50.0, "cost_usd": 0.5},
        {"plan": "Plan-1", "latency_ms": None, "cost_usd": 2.0},
    ]
    assert [i["plan"] for i in render.sort_items(items, COLUMNS, "plan")] == [
        "Plan-1",
        "plan-2",
        "plan-10",
    ]
    assert [i["plan"] for i in render.sort_items(items, COLUMNS, "-plan")] == [
        "plan-10",
        "plan-2",
        "Plan-1",
    ]
    # Unknown values last, ascending and descending alike.
    assert [i["plan"] for i in render.sort_items(items, COLUMNS, "latency-ms")] == [
        "plan-10",
        "plan-2",
        "Plan-1",
    ]
    assert [i["plan"] for i in render.sort_items(items, COLUMNS, "-cost_usd")] == [
        "Plan-1",
        "plan-2",
        "plan-10",
    ]


def test_an_unknown_sort_column_is_one_line_naming_the_choices() -> None:
    with pytest.raises(ConfigurationError, match=r"--sort: no column 'size'; one of: plan, note"):
        render.sort_items([], COLUMNS, "size")


def test_sort_by_a_nested_key() -> None:
    columns = (Column("group.model", "MODEL"),)
    items = [{"group": {"model": "m-10"}}, {"group": {"model": "m-9"}}]
    assert render.sort_items(items, columns, "model") == items[::-1]


def _wide_items() -> list[dict[str, object]]:
    return [
        {
            "plan": "7f0c9d3e-5a1b-4c2d-9e8f-0123456789ab",
            "note": "a very long note " * 8,
            "latency_ms": 1234.5678,
            "cost_usd": 12345.678,
            "calls": 2505,
        },
        {
            "plan": "plan-2",
            "note": "short",
            "latency_ms": 0.5,
            "cost_usd": None,
            "calls": 1,
        },
    ]


@pytest.mark.parametrize("width", [80, 200, 60])
def test_a_table_fits_by_cutting_text_never_numbers(width: int) -> None:
    console, buffer = _console(width)
    render.print_table(COLUMNS, _wide_items(), console=console)
    lines = buffer.getvalue().splitlines()
    assert max(len(line) for line in lines) <= width
    # Every number whole, whatever the width.
    for shown in ("1,230", "12,345.68", "2,505", "0.500", "unpriced"):
        assert shown in buffer.getvalue()
    header = " ".join(lines[: lines.index(next(line for line in lines if "─" in line))])
    assert sorted(header.split()) == sorted(
        ["PLAN", "NOTE", "LATENCY", "(ms)", "COST", "(USD)", "CALLS"]
    )


def test_the_text_column_goes_first_then_identifiers() -> None:
    console, buffer = _console(80)
    render.print_table(COLUMNS, _wide_items(), console=console)
    text = buffer.getvalue()
    assert "7f0c9d3e-5a1b-4c2d-9e8f-0123456789ab" in text  # the id whole at 80
    assert "a very long note " * 8 not in text
    assert "…" in text
    console, buffer = _console(44)
    render.print_table(COLUMNS, _wide_items(), console=console)
    assert "7f0c9d3e-5a1b-4c2d-9e8f-0123456789ab" not in buffer.getvalue()
    assert "7f0c9d3" in buffer.getvalue()


def test_too_many_numbers_for_the_terminal_print_whole_lines() -> None:
    console, buffer = _console(20)
    render.print_table(COLUMNS, _wide_items(), console=console)
    assert "12,345.68" in buffer.getvalue()
    assert "2,505" in buffer.getvalue()


def test_text_columns_are_left_out_last_and_named() -> None:
    console, buffer = _console(35)
    render.print_table(COLUMNS, _wide_items(), console=console)
    lines = buffer.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 35
    assert "NOTE" not in lines[1] and "short" not in buffer.getvalue()
    assert " ".join(lines[-2:]) == "left out at this width: NOTE (--json has them)"
    assert lines[3].startswith("7f0c9d3…")


def test_snapshot_at_80_and_200_columns() -> None:
    items = _wide_items()
    console, buffer = _console(80)
    render.print_table(COLUMNS, items, console=console, footer="showing 2 of 9 plans")
    assert buffer.getvalue().splitlines() == [
        "                                                       LATENCY       COST",
        "PLAN                                  NOTE                (ms)      (USD)  CALLS",
        "─" * 80,
        "7f0c9d3e-5a1b-4c2d-9e8f-0123456789ab  a very long no…    1,230  12,345.68  2,505",
        "plan-2                                short              0.500   unpriced      1",
        "showing 2 of 9 plans",
    ]
    console, buffer = _console(200)
    render.print_table(COLUMNS, items, console=console)
    note = ("a very long note " * 8)[:128] + "…"  # 200 - 4 gaps - 36 - 27 = 129
    assert buffer.getvalue().splitlines() == [
        f"{'PLAN':38}{'NOTE':131}LATENCY (ms)  COST (USD)  CALLS",
        "─" * 200,
        f"7f0c9d3e-5a1b-4c2d-9e8f-0123456789ab  {note}         1,230   12,345.68  2,505",
        f"{'plan-2':38}{'short':131}       0.500    unpriced      1",
    ]


def test_hostile_text_prints_as_text() -> None:
    console, buffer = _console(200)
    render.print_table(COLUMNS, [{"plan": "[bold]x[/bold]", "note": ":smile:"}], console=console)
    assert "[bold]x[/bold]" in buffer.getvalue()
    assert ":smile:" in buffer.getvalue()


def test_no_color_is_respected(monkeypatch: pytest.MonkeyPatch) -> None:
    items = _wide_items()
    coloured, buffer = _console(200, force_terminal=True, color_system="truecolor")
    render.print_table(COLUMNS, items, console=coloured)
    assert "\x1b[2m" in buffer.getvalue()  # unpriced dimmed on a colour terminal
    monkeypatch.setenv("NO_COLOR", "1")
    plain, buffer = _console(200, force_terminal=True, color_system="truecolor")
    render.print_table(COLUMNS, items, console=plain)
    assert "\x1b[3" not in buffer.getvalue()  # no foreground colour at all


def test_the_console_is_unbounded_into_a_pipe_unless_columns_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    assert render.new_console().width > 1000
    monkeypatch.setenv("COLUMNS", "80")
    assert render.new_console().width == 80


def test_json_list_has_one_shape(capsys: pytest.CaptureFixture[str]) -> None:
    render.write_list([])
    render.write_list([{"cost_usd": None, "n": 1.5, "bad": float("nan")}], next_cursor="abc")
    empty, full = capsys.readouterr().out.splitlines()
    assert json.loads(empty) == {"items": [], "next_cursor": None}
    assert json.loads(full) == {
        "items": [{"cost_usd": None, "n": 1.5, "bad": None}],
        "next_cursor": "abc",
    }


def test_emit_sorts_json_and_table_alike(capsys: pytest.CaptureFixture[str]) -> None:
    items = [{"plan": "plan-10"}, {"plan": "plan-2"}]
    render.emit(_args("--json"), COLUMNS, items, default_sort="plan")
    assert [i["plan"] for i in json.loads(capsys.readouterr().out)["items"]] == [
        "plan-2",
        "plan-10",
    ]
    render.emit(_args("--jsonl", "--sort=-plan"), COLUMNS, items, default_sort="plan")
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["plan"] for line in lines] == ["plan-10", "plan-2"]


def test_emit_empty_prints_the_empty_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    render.emit(_args(), COLUMNS, [], empty="no plans", footer=None)
    assert capsys.readouterr().out == "no plans\n"


def test_footers_say_the_truth() -> None:
    assert render.footer(3, 2505, "dead letter") == "showing 3 of 2,505 dead letters"
    assert render.footer(3, 3, "dead letter") == "3 dead letters"
    assert render.footer(1, 1, "dead letter") == "1 dead letter"
    assert render.footer(0, 1, "plan") == "showing 0 of 1 plan"
    assert render.footer(2, None, "entry", "entries") == "showing 2 entries; more follow"


def test_several_sort_columns_the_first_deciding_first() -> None:
    items = [
        {"plan": "b", "calls": 1},
        {"plan": "a", "calls": 2},
        {"plan": "a", "calls": 1},
        {"plan": "b", "calls": 2},
    ]
    assert render.sort_items(items, COLUMNS, "plan,-calls") == [
        {"plan": "a", "calls": 2},
        {"plan": "a", "calls": 1},
        {"plan": "b", "calls": 2},
        {"plan": "b", "calls": 1},
    ]
    # Descending keeps ties in their previous order (a stable sort).
    assert render.sort_items(items, COLUMNS, "-calls") == [items[1], items[3], items[0], items[2]]


def test_a_column_of_mixed_units_formats_each_row_by_its_own() -> None:
    column = Column("sum", "SUM", Kind.NUMBER, unit_key="unit")
    assert render.cell({"sum": 0.756, "unit": "USD"}, column) == "0.76"
    assert render.cell({"sum": 10.7039, "unit": "ms"}, column) == "10.7"
    assert render.cell({"sum": 321.0, "unit": "tokens"}, column) == "321"
    assert render.cell({"sum": None, "unit": "USD"}, column) == "-"


def test_json_writes_non_finite_figures_as_null_and_the_rest_as_json_does() -> None:
    finite = {"items": [{"le": 5.0, "count": 2, "labels": {"a": "b"}}], "t": (1, 2.5)}
    assert render.dumps(finite) == json.dumps(finite)
    unknown = {"p50": float("nan"), "buckets": [{"le": float("inf")}], "m": MappingProxyType({})}
    assert render.dumps(unknown) == '{"p50": null, "buckets": [{"le": null}], "m": {}}'
    with pytest.raises(TypeError):
        render.dumps({"x": object()})
