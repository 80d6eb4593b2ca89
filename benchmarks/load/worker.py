"""Worker throughput: rows per second worker processes persist from a backlog (read,
decode, validate, write, commit, acknowledge), with one worker and with two in the
same consumer group; the CPU seconds the worker processes used (rows per CPU-second);
and, beside one worker, PostgreSQL's own server-side COPY of the same rows
(:mod:`benchmarks.load.ceiling`). The rate is taken from the rows' commit times, so process
start-up is not in it; the wall time from start to exit is reported beside it."""

from __future__ import annotations

from typing import Any

from benchmarks.load import backlog, ceiling, drivers, rows
from benchmarks.load.context import Deadline, RunContext
from benchmarks.load.processes import WorkerProcess, children_cpu_s
from benchmarks.load.stats import rate

WORKER_COUNTS = (1, 2)


def measure(ctx: RunContext, name: str, workers: int, records: int) -> dict[str, Any]:
    pipeline = drivers.pipeline(name)
    with ctx.scratch(f"worker-{name}-{workers}") as (keys, database_url):
        drivers.prepare_database(name, database_url)
        first = workers == 1 and name == drivers.FLEETTRACE
        startup_cpu_s = _startup_cpu_s(ctx, name, keys.namespace, database_url) if first else None
        prefill_s = backlog.prefill(name, ctx.redis_url, keys.namespace, records)
        cpu_before = children_cpu_s()
        procs = [
            WorkerProcess(
                drivers.worker_argv(
                    name, ctx.redis_url, keys.namespace, database_url, burst=True, index=i
                ),
                label=f"{name} worker {i}",
            )
            for i in range(workers)
        ]
        deadline = Deadline(600)
        codes = [p.wait(deadline.left_s) for p in procs]
        cpu_s = children_cpu_s() - cpu_before
        wall_s = max(p.elapsed_s for p in procs)
        stored = rows.count(database_url, pipeline.table)
        figures = rows.steady_rate(database_url, pipeline.table)
        duplicates = rows.duplicates(database_url, pipeline.table)
        # PostgreSQL's own rate for the same rows, on the same server, in this run.
        probe = (
            ceiling.copy_ceiling(database_url, pipeline.table)
            if name == drivers.FLEETTRACE and workers == 1
            else None
        )
        failed = [p.output_tail() for p, code in zip(procs, codes, strict=True) if code != 0]
        for proc in procs:
            proc.discard_log()
        return {
            "workers": workers,
            "records": records,
            "rows_stored": stored,
            "duplicates": duplicates,
            "exit_codes": codes,
            "rows_per_s": figures["rows_per_s"],
            "rows_per_transaction": figures.get("rows_per_transaction"),
            "wall_s": round(wall_s, 3),
            "wall_rows_per_s": rate(stored, wall_s),
            "worker_cpu_s": round(cpu_s, 2),
            "rows_per_cpu_s": rate(stored, cpu_s),
            **(
                {
                    "startup_cpu_s": round(startup_cpu_s, 2),
                    "rows_per_cpu_s_after_startup": rate(stored, cpu_s - startup_cpu_s),
                }
                if startup_cpu_s is not None
                else {}
            ),
            "peak_rss_mb": round(max(p.peak_rss for p in procs) / 2**20, 1),
            "prefill_s": round(prefill_s, 2),
            **({"ceiling": probe} if probe is not None else {}),
            **({"errors": failed} if failed else {}),
        }


def _startup_cpu_s(ctx: RunContext, name: str, namespace: str, database_url: str) -> float:
    """CPU seconds of one worker that starts, finds its streams empty and exits: what
    every figure per CPU-second above carries once, whatever the backlog."""
    before = children_cpu_s()
    proc = WorkerProcess(
        drivers.worker_argv(name, ctx.redis_url, namespace, database_url, burst=True),
        label=f"{name} worker on an empty stream",
    )
    proc.wait(Deadline(120).left_s)
    proc.discard_log()
    return children_cpu_s() - before


def run(ctx: RunContext) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name in ctx.pipelines():
        records = (
            ctx.sizes.worker_records
            if name == drivers.FLEETTRACE
            else ctx.sizes.baseline_worker_records
        )
        result[name] = {
            f"{workers}_workers": measure(ctx, name, workers, records) for workers in WORKER_COUNTS
        }
    return result
