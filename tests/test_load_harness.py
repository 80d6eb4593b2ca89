"""The load harness's machinery, run with ``--quick`` (tiny sizes) against the real
Redis and PostgreSQL: every section reports, the figures are internally consistent
(every record sent is in Redis or a row, no duplicates), and the run leaves no
namespace or database behind. No figure is compared with a speed: that is what the
harness itself is for."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import redis

from tests.conftest import PG_ADMIN_URL, REDIS_URL

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {
    "imports",
    "live_reads",
    "hotpath",
    "hooks",
    "producer",
    "worker",
    "freshness",
    "drain",
    "memory",
    "capacity",
    "shards",
}


#: Every test here reads one run of the harness (about 2 minutes, in the fixture).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report() -> dict:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.load",
            "--quick",
            "--json",
            "--redis-url",
            REDIS_URL,
            "--pg-url",
            PG_ADMIN_URL,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def _measured(report: dict) -> list[str]:
    """Pipelines the run could measure end to end."""
    return [name for name, why in report["pipelines"].items() if why is None and "-" not in name]


def test_every_section_reports_without_errors(report):
    assert report["errors"] == {}
    assert set(report["sections"]) == SECTIONS
    assert report["quick"] is True
    machine = report["machine"]
    assert machine["cpus"] >= 1
    assert machine["redis"].startswith(("6.", "7."))
    assert machine["postgresql"]


def test_both_pipelines_are_measured(report):
    assert report["pipelines"]["baseline"] is None
    assert report["pipelines"]["fleettrace-emitter"] is None
    assert report["pipelines"]["fleettrace"] is None, report["pipelines"]["fleettrace"]


def test_hot_path_times_every_call(report):
    hot = report["sections"]["hotpath"]
    sizes = report["sizes"]
    assert hot["record"]["calls"] == sizes["hotpath_calls"]
    assert hot["baseline_record"]["calls"] == sizes["hotpath_calls"]
    assert hot["traceable"]["calls"] == sizes["traceable_calls"]
    assert hot["otel_span"]["calls"] == sizes["otel_calls"]
    for figures in (hot["record"], hot["traceable"], hot["otel_span"], hot["dict_deque"]):
        assert 0 < figures["p50_us"] <= figures["p99_us"] <= figures["max_us"]
    # Tracing was really on: the local LangSmith endpoint received the runs.
    assert hot["traceable"]["posts_received"] > 0
    assert hot["dropped"] == 0
    assert hot["sent"] == sizes["hotpath_calls"] + 2_000 + sizes["hotpath_calls"] // 5


def test_producers_put_every_record_and_counter_in_redis(report):
    for name, figures in report["sections"]["producer"].items():
        assert figures["records_in_redis"] == figures["records"], name
        assert figures["dropped"] == 0, name
        assert figures["counters_match"] is True, name
        assert figures["records_per_s"] > 0
    # fleettrace packs a batch per entry; the baseline writes one entry per record.
    producer = report["sections"]["producer"]
    assert producer["fleettrace"]["stream_entries"] < producer["fleettrace"]["records"]
    assert producer["baseline"]["stream_entries"] == producer["baseline"]["records"]
    # Beside fleettrace's rate, its two ceilings: Redis's command time and the sender's
    # own work per record, each printed as a row.
    assert producer["fleettrace"]["redis_us_per_record"] > 0
    assert producer["fleettrace"]["sender_encode_us_per_record"] > 0
    figures = {row["figure"] for row in report["rows"] if row["section"] == "producer"}
    assert {
        "Redis's own time per record (ceiling)",
        "sender's work per record before Redis (its ceiling)",
    } <= figures


def test_workers_store_every_record_once(report):
    worker = report["sections"]["worker"]
    assert set(worker) == set(_measured(report))
    for name, runs in worker.items():
        assert set(runs) == {"1_workers", "2_workers"}
        for figures in runs.values():
            assert figures["exit_codes"] == [0] * figures["workers"], (name, figures)
            assert figures["rows_stored"] == figures["records"], (name, figures)
            assert figures["duplicates"] == 0
            assert figures["rows_per_s"] is None or figures["rows_per_s"] > 0
            assert figures["peak_rss_mb"] > 0
            assert figures["worker_cpu_s"] > 0
    # Beside one fleettrace worker: PostgreSQL's own COPY of the very rows it stored.
    assert worker["fleettrace"]["1_workers"]["startup_cpu_s"] > 0
    probe = worker["fleettrace"]["1_workers"]["ceiling"]
    assert probe["rows"] == worker["fleettrace"]["1_workers"]["rows_stored"], probe
    assert probe["rows_per_s"] > 0
    # ...and of the same rows into the worker's own table (partitions, triggers).
    assert probe["same_table"]["rows"] == probe["rows"], probe
    assert probe["same_table"]["rows_per_s"] > 0
    figures = {row["figure"]: row for row in report["rows"]}
    for figure in (
        "rows per worker CPU-second, 1 worker",
        "rows/s, 1 worker, share of the ceiling",
    ):
        assert figures[figure]["status"] in ("PASS", "MISS"), figures[figure]


def test_import_cost_is_measured_beside_langsmith(report):
    imports = report["sections"]["imports"]
    for module in ("fleettrace", "langsmith"):
        assert imports[module]["ms"] > 0
        assert imports[module]["modules"] > 0
    figures = {row["figure"]: row for row in report["rows"]}
    for figure in ("import fleettrace", "import fleettrace, added RSS"):
        assert figures[figure]["status"] in ("PASS", "MISS"), figures[figure]
        assert figures[figure]["baseline"] is not None


def test_freshness_trials_store_what_was_sent(report):
    fresh = report["sections"]["freshness"]
    assert set(fresh) == set(_measured(report))
    for name, figures in fresh.items():
        for offered, trial in figures["rates"].items():
            assert trial["offered_per_s"] == int(offered)
            assert trial["rows_stored"] == trial["sent"] > 0, (name, trial)
            # The window's rows only: the warm-up's were stored before it and left out.
            assert trial["rows"] == trial["sent"]
            assert trial["warm_up_rows"] > 0
            assert trial["first_records_ms"] > 0
            assert trial["p50_ms"] <= trial["p99_ms"] <= trial["max_ms"]
            assert trial["worker_exit_code"] == 0
        ladder = figures["ladder"]
        assert ladder["trials"]
        sustained = [t["offered_per_s"] for t in ladder["trials"] if t["sustained"]]
        assert ladder["max_steady_per_s"] == (max(sustained) if sustained else None)


def test_drain_stores_the_whole_backlog(report):
    drain = report["sections"]["drain"]
    assert set(drain) == set(_measured(report))
    for figures in drain.values():
        assert figures["exit_code"] == 0
        assert figures["rows_stored"] == figures["records"]
        assert figures["duplicates"] == 0
        assert figures["drain_s"] > 0


def test_live_reads_section(report):
    """Both read paths measured on the same data, each with a row beside its comparator."""
    live = report["sections"]["live_reads"]
    reads = {"is_over_budget_ms", "read_live_ms", "metrics_json_ms", "scrape_ms"}
    assert set(live["aggregates"]) == set(live["summing_producers"]) == reads
    assert (live["producers"], live["plans"]) == (100, 5001)
    rows = {row["figure"]: row for row in report["rows"] if row["section"] == "live reads"}
    assert rows["is_over_budget p50"]["baseline"] == live["summing_producers"]["is_over_budget_ms"]


def test_memory_section(report):
    memory = report["sections"]["memory"]
    emitter = memory["emitter"]
    # Buffered counts the batch the sender holds (at most one batch) beside the buffer.
    bound = emitter["buffer_records"] + emitter["batch_records"]
    assert emitter["buffered_at_bound"] <= bound
    assert emitter["buffered_after_3x"] <= bound
    # Three times the bound recorded with nothing sent: the rest was dropped and counted.
    assert emitter["dropped"] >= 2 * emitter["buffer_records"] - 1_000
    assert set(memory["worker_peak_rss_mb"]) == set(_measured(report))


def test_hooks_section_times_every_hook_and_sends_every_record(report):
    hooks = report["sections"]["hooks"]
    ours = hooks["fleettrace"]
    calls = report["sizes"]["hook_calls"]
    assert ours["tool"]["calls"] == ours["actor"]["calls"] == calls
    assert ours["llm"]["calls"] > calls  # the failing calls are retried once
    for figures in (ours["llm"], ours["tool"], ours["actor"], hooks["otel_span"]):
        assert 0 < figures["p50_us"] <= figures["p99_us"] <= figures["max_us"]
    assert ours["flushed"] is True
    assert ours["accepted"] == ours["sent"] > 0 and ours["dropped"] == 0
    assert ours["rejected"] == {}
    assert hooks["traceable"]["calls"] == report["sizes"]["traceable_calls"]
    assert "p50_us" in hooks["observe"] or "langfuse" in hooks["observe"]["unavailable"]
    assert hooks["sink_posts"] > 0  # tracing was on
    assert hooks["memory"]["buffered"] >= hooks["memory"]["calls"]
    stages = hooks["stages"]
    assert stages["records"] > 0 and all(v > 0 for v in stages["sender_us_per_record"].values())
    rows = {row["figure"]: row for row in report["rows"] if row["section"] == "hooks"}
    for name in ("llm hook p50", "llm hook p99", "tool hook p50", "actor hook p50"):
        assert rows[name]["status"] in {"PASS", "MISS"}, rows[name]
    assert "llm hook p50 x 8 vs OTel span p50" in rows
    assert "llm hook p50 x 50 vs @traceable p50" in rows
    assert "emitter memory per 100k hook records" in rows


def test_report_rows_carry_targets_and_ratios(report):
    rows = {row["figure"]: row for row in report["rows"]}
    assert {"record() p50", "record() p99", "rows/s, 1 worker", "worker peak RSS"} <= set(rows)
    for row in report["rows"]:
        assert row["status"] in {"PASS", "MISS", "n/a", ""}
        if row["target"] is not None and row["fleettrace"] is not None:
            assert row["status"] in {"PASS", "MISS"}, row
        if row["fleettrace"] and row["baseline"]:
            assert row["ratio_vs_baseline"] == pytest.approx(
                row["fleettrace"] / row["baseline"], rel=1e-3
            )
    assert "record() p50" in report["table"]
    assert report["markdown"].startswith("| section |")


def test_the_run_leaves_nothing_behind(report):
    run_id = report["run_id"]
    client = redis.Redis.from_url(REDIS_URL)
    try:
        assert list(client.scan_iter(match=f"{{bench-{run_id}-*", count=1000)) == []
    finally:
        client.close()
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        left = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s",
            (f"fleettrace_bench_{run_id}_%",),
        ).fetchall()
    assert left == []


@pytest.fixture(scope="module")
def capacity_run(report: dict) -> tuple[str, dict]:
    """The capacity section of the quick run: its printed table and the JSON."""
    return report["table"], report


def test_the_capacity_section_prints_its_rows(capacity_run):
    table, _ = capacity_run
    printed = [line.split("  ")[0] for line in table.splitlines() if line.startswith("capacity ")]
    assert len(printed) == 11
    for figure in (
        "records per LLM call (hook workload)",
        "stream memory per 1M records",
        "Redis time per batch call, batches of 3",
        "PostgreSQL bytes per llm_traces row",
        "COPY into llm_traces shape, primary key only",
    ):
        assert re.search(rf"^capacity +{re.escape(figure)}  ", table, flags=re.MULTILINE), figure


def test_the_capacity_section_counts_every_record_it_measures(capacity_run):
    _, report = capacity_run
    assert report["errors"] == {}
    capacity = report["sections"]["capacity"]
    emitted = capacity["emitted"]
    assert emitted["accepted"] == emitted["sent"] > 0 and emitted["dropped"] == 0
    # Every record sent is in the streams when they are measured, and stored once after.
    assert capacity["stream_memory"]["records"] == emitted["sent"] == capacity["rows_stored"]
    assert capacity["stream_memory"]["bytes_per_record"] > 0
    tables = capacity["tables"]
    assert tables["llm_traces"]["rows"] == emitted["llm_calls"]  # retried calls included
    assert tables["tool_calls"]["rows"] == emitted["calls"]  # one tool call per LLM call
    assert capacity["records_per_llm_call"]["tool"] == 1.0
    for table in tables.values():
        assert table["bytes_per_row"] > table["index_bytes_per_row"] > 0
    small = capacity["small_batches"]
    assert small["accepted"] == small["sent"] and small["dropped"] == 0
    # At most 3 records per batch: every batch is a function call Redis counted.
    assert small["batches"] >= small["sent"] / 3
    assert small["fcall_calls_counted"] >= small["batches"]
    assert small["stream_memory"]["records"] == small["sent"]
    index = capacity["index_cost"]
    assert index["rows"] == tables["llm_traces"]["rows"]
    assert set(index["rows_per_s"]) == {"all_indexes", "primary_key_only", "no_indexes"}
    run_id = report["run_id"]
    client = redis.Redis.from_url(REDIS_URL)
    try:
        assert list(client.scan_iter(match=f"{{bench-{run_id}-*", count=1000)) == []
    finally:
        client.close()


def test_the_shards_section_measures_one_two_and_three_shards_or_says_why_not(report):
    shards = report["sections"]["shards"]
    if "skipped" in shards:  # no redis-server with cluster mode, or no redis-cli
        assert shards["skipped"].startswith("no local Redis Cluster here")
        return
    assert set(shards["records_per_s"]) == {"1", "2", "3"}
    assert all(rate > 0 for rate in shards["records_per_s"].values())
    rows = [row for row in report["rows"] if row["section"] == "shards"]
    rates = [row for row in rows if row["unit"] == "records/s"]
    assert [row["baseline"] for row in rates] == [shards["records_per_s"]["1"]] * 3
    # The busiest master's CPU per shard count, beside the 1-shard figure.
    cpu = shards["busiest_master_cpu_ms_per_10k"]
    assert set(cpu) == {"1", "2", "3"} and all(ms > 0 for ms in cpu.values())
    busiest = [row for row in rows if row["unit"] == "ms/10k records"]
    assert [row["fleettrace"] for row in busiest] == [cpu[n] for n in ("1", "2", "3")]
    assert [row["baseline"] for row in busiest] == [cpu["1"]] * 3
