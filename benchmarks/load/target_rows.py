"""The rows of the import and worker sections, with their targets.

Each target is read against a comparator measured in the same run: ``import
langsmith`` beside ``import fleettrace``, and PostgreSQL's own server-side COPY of
the very rows the worker stored beside the worker's rate.
"""

from __future__ import annotations

from typing import Any, Final

from benchmarks.load.row import Row, check, get

IMPORT_MS_TARGET: Final = 100.0
IMPORT_MB_TARGET: Final = 20.0
WORKER_ROWS_PER_S_TARGET: Final = 60_000
WORKER_ROWS_PER_CPU_S_TARGET: Final = 80_000
#: The share of PostgreSQL's own COPY rate one worker must reach.
CEILING_SHARE_TARGET: Final = 0.75
#: Two worker processes against one.
TWO_WORKERS_TARGET: Final = 1.6
# The performance issue's targets of the other sections (report.py reads them here).
PRODUCER_RECORDS_PER_S_TARGET: Final = 150_000
FRESHNESS_P99_MS_TARGET: Final = 25.0
#: The offered rate the freshness p99 target is read at.
FRESHNESS_TARGET_RATE: Final = "10000"
DRAIN_S_TARGET: Final = 15.0
WORKER_RSS_MB_TARGET: Final = 120.0


def import_rows(imports: dict[str, Any]) -> list[Row]:
    if not imports:
        return []
    ms, mb = get(imports, "fleettrace", "ms"), get(imports, "fleettrace", "rss_mb")
    note = (
        f"median of {imports.get('runs')} fresh interpreters; baseline: import langsmith; "
        f"CPU time fleettrace {get(imports, 'fleettrace', 'cpu_ms')} ms, "
        f"langsmith {get(imports, 'langsmith', 'cpu_ms')} ms; "
        f"modules loaded: fleettrace {get(imports, 'fleettrace', 'modules')}, "
        f"langsmith {get(imports, 'langsmith', 'modules')}"
    )
    return [
        Row(
            "import",
            "import fleettrace",
            "ms",
            ms,
            get(imports, "langsmith", "ms"),
            "lower",
            f"<= {IMPORT_MS_TARGET:.0f}",
            check(ms, lambda v: v <= IMPORT_MS_TARGET),
            note,
        ),
        Row(
            "import",
            "import fleettrace, added RSS",
            "MB",
            mb,
            get(imports, "langsmith", "rss_mb"),
            "lower",
            f"<= {IMPORT_MB_TARGET:.0f}",
            check(mb, lambda v: v <= IMPORT_MB_TARGET),
        ),
        Row(
            "import",
            "first use: import fleettrace.hooks",
            "ms",
            get(imports, "fleettrace_first_use", "ms"),
            get(imports, "langsmith_first_use", "ms"),
            "lower",
            note=f"baseline: import langsmith.run_helpers (@traceable); added RSS "
            f"{get(imports, 'fleettrace_first_use', 'rss_mb')} MB vs "
            f"{get(imports, 'langsmith_first_use', 'rss_mb')} MB; CPU "
            f"{get(imports, 'fleettrace_first_use', 'cpu_ms')} ms vs "
            f"{get(imports, 'langsmith_first_use', 'cpu_ms')} ms",
        ),
    ]


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def worker_rows(worker: dict[str, Any]) -> list[Row]:
    if not worker:
        return []
    one = get(worker, "fleettrace", "1_workers", "rows_per_s")
    two = get(worker, "fleettrace", "2_workers", "rows_per_s")
    base_one = get(worker, "baseline", "1_workers", "rows_per_s")
    per_cpu = get(worker, "fleettrace", "1_workers", "rows_per_cpu_s")
    ceiling = get(worker, "fleettrace", "1_workers", "ceiling", "rows_per_s")
    same = get(worker, "fleettrace", "1_workers", "ceiling", "same_table", "rows_per_s")
    share = None if one is None or not same else round(100 * one / same, 1)
    plain_share = None if one is None or not ceiling else round(100 * one / ceiling, 1)
    two_share = None if two is None or not same else round(100 * two / same, 1)
    return [
        Row(
            "worker",
            "rows/s, 1 worker",
            "1/s",
            one,
            base_one,
            "higher",
            f">= {WORKER_ROWS_PER_S_TARGET}",
            check(one, lambda v: v >= WORKER_ROWS_PER_S_TARGET),
        ),
        Row(
            "worker",
            "rows per worker CPU-second, 1 worker",
            "1/s",
            per_cpu,
            get(worker, "baseline", "1_workers", "rows_per_cpu_s"),
            "higher",
            f">= {WORKER_ROWS_PER_CPU_S_TARGET}",
            check(per_cpu, lambda v: v >= WORKER_ROWS_PER_CPU_S_TARGET),
            f"worker CPU {get(worker, 'fleettrace', '1_workers', 'worker_cpu_s')} s "
            f"for {get(worker, 'fleettrace', '1_workers', 'rows_stored')} rows, start-up "
            f"included (a worker on an empty stream: "
            f"{get(worker, 'fleettrace', '1_workers', 'startup_cpu_s')} s); after start-up "
            f"{_count(get(worker, 'fleettrace', '1_workers', 'rows_per_cpu_s_after_startup'))} "
            "rows per CPU-second",
        ),
        Row(
            "worker",
            "PostgreSQL's own COPY of the same rows (ceiling)",
            "1/s",
            ceiling,
            None,
            "higher",
            note=get(worker, "fleettrace", "1_workers", "ceiling", "how"),
        ),
        Row(
            "worker",
            "PostgreSQL's own COPY of the same rows into the worker's table (ceiling)",
            "1/s",
            same,
            None,
            "higher",
            note=get(worker, "fleettrace", "1_workers", "ceiling", "same_table", "how"),
        ),
        Row(
            "worker",
            "rows/s, 1 worker, share of the ceiling",
            "%",
            share,
            None,
            "higher",
            f">= {CEILING_SHARE_TARGET:.0%}",
            None if share is None else share >= 100 * CEILING_SHARE_TARGET,
            f"of the COPY into the worker's own table; of the plain table's: {plain_share} %",
        ),
        Row(
            "worker",
            "rows/s, 1 worker, vs baseline",
            "x",
            None if one is None or not base_one else round(one / base_one, 2),
            None,
            "higher",
            ">= 3.5",
            None if one is None or not base_one else one / base_one >= 3.5,
        ),
        Row(
            "worker",
            "rows/s, 2 workers",
            "1/s",
            two,
            get(worker, "baseline", "2_workers", "rows_per_s"),
            "higher",
            f">= {TWO_WORKERS_TARGET}x 1 worker",
            None if one is None or two is None else two >= TWO_WORKERS_TARGET * one,
            None
            if one is None or two is None
            else f"{two / one:.2f}x one worker; {two_share} % of the ceiling into the "
            "worker's table",
        ),
    ]
