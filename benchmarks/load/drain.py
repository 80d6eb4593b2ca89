"""Backlog drain: producers have finished and left a backlog; one worker is started
(``--burst``: it exits when the stream is empty) and the clock runs from its start
to its exit, interpreter start-up included. The worker's peak RSS is taken here too:
a large backlog is where a worker that buffers too much shows it."""

from __future__ import annotations

from typing import Any

from benchmarks.load import backlog, drivers, rows
from benchmarks.load.context import RunContext
from benchmarks.load.processes import WorkerProcess, children_cpu_s
from benchmarks.load.stats import rate


def measure(ctx: RunContext, name: str, records: int) -> dict[str, Any]:
    pipeline = drivers.pipeline(name)
    with ctx.scratch(f"drain-{name}") as (keys, database_url):
        drivers.prepare_database(name, database_url)
        prefill_s = backlog.prefill(name, ctx.redis_url, keys.namespace, records)
        cpu_before = children_cpu_s()
        worker = WorkerProcess(
            drivers.worker_argv(name, ctx.redis_url, keys.namespace, database_url, burst=True),
            label=f"{name} worker",
        )
        code = worker.wait(900)
        drain_s = worker.elapsed_s
        cpu_s = children_cpu_s() - cpu_before
        stored = rows.count(database_url, pipeline.table)
        figures = {
            "records": records,
            "drain_s": round(drain_s, 2),
            "records_per_s": rate(stored, drain_s),
            "rows_stored": stored,
            "duplicates": rows.duplicates(database_url, pipeline.table),
            "exit_code": code,
            "worker_cpu_s": round(cpu_s, 2),
            "rows_per_cpu_s": rate(stored, cpu_s),
            "peak_rss_mb": round(worker.peak_rss / 2**20, 1),
            "prefill_s": round(prefill_s, 2),
        }
        if code != 0:
            figures["error"] = worker.output_tail()
        worker.discard_log()
        return figures


def run(ctx: RunContext) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name in ctx.pipelines():
        records = (
            ctx.sizes.drain_records
            if name == drivers.FLEETTRACE
            else ctx.sizes.baseline_drain_records
        )
        result[name] = measure(ctx, name, records)
        if records != ctx.sizes.drain_records:
            # Same rate, scaled: draining is linear in the backlog once the worker runs.
            result[name]["projected_drain_s"] = round(
                ctx.sizes.drain_records / result[name]["records_per_s"], 1
            )
    return result
