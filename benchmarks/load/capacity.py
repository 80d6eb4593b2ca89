"""Figures for the capacity model of docs/scaling.md, measured on the run's Redis and
PostgreSQL with a realistic agent workload.

- **What an agent emits per LLM call.** :class:`benchmarks.load.records.HookWorkload`
  driven through the real hooks (:func:`benchmarks.load.hook_costs.drive`: plans of 25
  calls with tags and metadata, a decision, an actor and a tool call around each LLM
  call, 5 % failing once and retried) into the default emitter: records per call by
  kind, as the stream entries count them.
- **Stream memory.** ``MEMORY USAGE key SAMPLES 0`` (every entry counted) of the
  producer's streams holding those records, before a worker reads them: bytes per
  record, and per million. The namespace's other keys (live counters, plan hashes,
  the emitter's figures) are reported beside it: they grow with plans and label sets,
  not with records.
- **Small batches.** A fleet of slow agents sends batches of a few records, one
  function call each, where a busy emitter fills batches of 1,000. The same workload
  again with ``max_batch_records`` of 3. For both runs: Redis's own time per batch
  call and per record (``INFO commandstats`` of ``FCALL``, ``EVALSHA`` on Redis 6.2;
  another client's calls in the same moment would be in the average, and the count
  of calls shows it), and the stream memory.
- **PostgreSQL bytes per row.** ``fleettrace worker --burst`` stores the sample; heap,
  TOAST and index bytes of every partition of each record table, per row.
- **Index cost.** The stored ``llm_traces`` rows copied by the server (binary
  ``COPY``, as :mod:`benchmarks.load.ceiling` does) into three empty tables of the same
  shape: with every index, with the primary key only, with none; the best of two
  rounds each. Needs a superuser and a server on this machine; otherwise the reason
  is reported instead.

Records per second into one shard and rows per second per worker come from the
``producer`` and ``worker`` sections.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import os
import time
import uuid
from typing import Any, Final

import psycopg
import redis
from psycopg import sql

from benchmarks.load import drivers, isolated
from benchmarks.load.context import RunContext
from benchmarks.load.processes import WorkerProcess, children_cpu_s
from benchmarks.load.row import Row, get
from benchmarks.load.stats import rate
from fleettrace.codec import Kind
from fleettrace.keys import FIELD_COUNT, FIELD_KIND

SECTION: Final = "capacity"
TABLES: Final = ("llm_traces", "tool_calls", "plans", "metric_samples")
#: The batch bound of the small-batch run: what a slow agent's batches hold.
SMALL_BATCH_RECORDS: Final = 3
#: Index variants of the copy probe: the LIKE clause of each probe table.
INDEX_VARIANTS: Final = {
    "all_indexes": "INCLUDING ALL",
    "primary_key_only": "INCLUDING DEFAULTS INCLUDING CONSTRAINTS",
    "no_indexes": "INCLUDING DEFAULTS INCLUDING CONSTRAINTS",
}
ROUNDS: Final = 2
MB: Final = 1024 * 1024


def emit_workload(
    redis_url: str, namespace: str, calls: int, batch_records: int | None = None
) -> dict[str, Any]:
    """Run ``calls`` LLM calls of the hook workload through the default emitter (in
    a measurement process), batches of at most ``batch_records`` when given; what the
    emitter reports, and Redis's own time in the batch function meanwhile."""
    import fleettrace
    from benchmarks.load.hook_costs import drive
    from benchmarks.load.records import HookWorkload
    from fleettrace.batch_script import load_library

    client = redis.Redis.from_url(redis_url)
    load_library(client)  # as `fleettrace migrate` would
    tuning = {} if batch_records is None else {"max_batch_records": batch_records}
    emitter = fleettrace.configure(redis_url, namespace, **tuning)
    workload = HookWorkload(calls)
    gc.collect()
    calls_before, usec_before = _fcall_stats(client)
    started = time.perf_counter()
    drive(workload)
    flushed = emitter.flush(120)
    seconds = time.perf_counter() - started
    calls_after, usec_after = _fcall_stats(client)
    client.close()
    stats = emitter.stats
    emitter.close()
    fcalls = calls_after - calls_before
    return {
        "calls": calls,
        "llm_calls": sum(1 + fails for *_, fails in workload.calls),
        "flushed": flushed,
        "accepted": stats.accepted,
        "sent": stats.sent,
        "dropped": stats.dropped,
        "batches": stats.batches,
        "seconds": round(seconds, 3),
        "fcall_calls_counted": fcalls,
        "redis_us_per_fcall": round((usec_after - usec_before) / fcalls, 2) if fcalls else None,
        "redis_us_per_record": round((usec_after - usec_before) / stats.sent, 2)
        if stats.sent
        else None,
    }


def _fcall_stats(client: redis.Redis) -> tuple[int, int]:
    """Calls and microseconds of the batch function so far, from ``INFO commandstats``:
    ``FCALL``, and ``EVALSHA`` where a Redis 6.2 runs it as a script."""
    stats = client.info("commandstats")
    found = [stats.get(name) or {} for name in ("cmdstat_fcall", "cmdstat_evalsha")]
    return sum(int(f.get("calls", 0)) for f in found), sum(int(f.get("usec", 0)) for f in found)


def stream_memory(redis_url: str, namespace: str) -> dict[str, Any]:
    """Bytes of the namespace's streams per record they hold, and of its other keys."""
    client = redis.Redis.from_url(redis_url)
    try:
        streams: dict[str, Any] = {}
        other_bytes = other_keys = 0
        for raw in client.scan_iter(match=f"{{{namespace}}}*", count=1000):
            key = bytes(raw).decode()
            size = int(client.memory_usage(key, samples=0) or 0)
            if client.type(key) != b"stream":
                other_bytes += size
                other_keys += 1
                continue
            kinds: dict[str, int] = {}
            entries = 0
            for _, fields in _entries(client, key):
                entries += 1
                kind = Kind(fields[FIELD_KIND].decode()).name.lower()
                kinds[kind] = kinds.get(kind, 0) + int(fields[FIELD_COUNT])
            records = sum(kinds.values())
            streams[key.rsplit(":", 1)[1]] = {
                "bytes": size,
                "entries": entries,
                "records": records,
                "records_by_kind": kinds,
                "bytes_per_record": round(size / records, 1) if records else None,
            }
    finally:
        client.close()
    records = sum(s["records"] for s in streams.values())
    total = sum(s["bytes"] for s in streams.values())
    return {
        "streams": streams,
        "records": records,
        "bytes_per_record": round(total / records, 1) if records else None,
        "mb_per_million_records": round(total / records * 1e6 / MB, 1) if records else None,
        "other_keys": other_keys,
        "other_keys_bytes": other_bytes,
    }


def _entries(client: redis.Redis, stream: str) -> Any:
    """Every entry of ``stream``, read in pages."""
    start = "-"
    while True:
        page: Any = client.xrange(stream, min=start, count=200)
        if not page:
            return
        yield from page
        if len(page) < 200:
            return
        start = "(" + page[-1][0].decode()


def table_sizes(database_url: str) -> dict[str, Any]:
    """Rows and bytes (heap, TOAST, indexes) of each record table's partitions."""
    found: dict[str, Any] = {}
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        for table in TABLES:
            row = conn.execute(
                "SELECT coalesce(sum(pg_relation_size(inhrelid)), 0), "
                "coalesce(sum(pg_table_size(inhrelid)), 0), "
                "coalesce(sum(pg_indexes_size(inhrelid)), 0) "
                "FROM pg_inherits WHERE inhparent = to_regclass(%s)",
                (table,),
            ).fetchone()
            count = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
            rows = int(count.fetchone()[0])  # type: ignore[index]
            heap, with_toast, indexes = (int(v) for v in row)  # type: ignore[union-attr]
            found[table] = {
                "rows": rows,
                "heap_bytes": heap,
                "toast_bytes": with_toast - heap,
                "index_bytes": indexes,
                "bytes_per_row": _per(with_toast + indexes, rows),
                "table_bytes_per_row": _per(with_toast, rows),
                "index_bytes_per_row": _per(indexes, rows),
            }
    return found


def _per(total: int, count: int) -> float | None:
    return round(total / count, 1) if count else None


def index_cost(database_url: str) -> dict[str, Any]:
    """Server-side COPY rate of the stored llm_traces rows into a table with every
    index, the primary key only, and no index."""
    path = f"/tmp/fleettrace-capacity-{uuid.uuid4().hex}.bin"
    best: dict[str, float] = {}
    rows = 0
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("COPY (SELECT * FROM llm_traces) TO {} (FORMAT binary)").format(
                    sql.Literal(path)
                )
            )
            for _, (variant, like) in itertools.product(range(ROUNDS), INDEX_VARIANTS.items()):
                probe = sql.Identifier(f"capacity_probe_{variant}")
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(probe))
                conn.execute(
                    sql.SQL("CREATE TABLE {} (LIKE llm_traces {})").format(probe, sql.SQL(like))
                )
                if variant == "primary_key_only":
                    conn.execute(
                        sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (trace_id, started_at)").format(
                            probe
                        )
                    )
                conn.execute("CHECKPOINT")
                started = time.perf_counter()
                cursor = conn.execute(
                    sql.SQL("COPY {} FROM {} (FORMAT binary)").format(probe, sql.Literal(path))
                )
                seconds = time.perf_counter() - started
                rows = cursor.rowcount
                best[variant] = max(best.get(variant, 0.0), rate(rows, seconds))
                conn.execute(sql.SQL("DROP TABLE {}").format(probe))
    except psycopg.Error as error:
        return {"rows_per_s": None, "how": f"not measured: {type(error).__name__}: {error}"}
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)
    return {
        "rows": rows,
        "rows_per_s": best,
        "how": f"server-side binary COPY of the {rows:,} stored llm_traces rows into an "
        f"empty table, best of {ROUNDS} rounds per variant",
    }


def run(ctx: RunContext) -> dict[str, Any]:
    calls = ctx.sizes.capacity_calls
    result: dict[str, Any] = {}
    with ctx.scratch("capacity") as (keys, database_url):
        drivers.prepare_database(drivers.FLEETTRACE, database_url)
        emitted = isolated.call(emit_workload, ctx.redis_url, keys.namespace, calls, timeout_s=600)
        memory = stream_memory(ctx.redis_url, keys.namespace)
        cpu_before = children_cpu_s()
        worker = WorkerProcess(
            drivers.worker_argv(
                drivers.FLEETTRACE, ctx.redis_url, keys.namespace, database_url, burst=True
            ),
            label="capacity worker",
        )
        code = worker.wait(600)
        if code != 0:
            raise RuntimeError(f"capacity worker exited {code}: {worker.output_tail()}")
        worker.discard_log()
        worker_cpu_s = children_cpu_s() - cpu_before
        sizes = table_sizes(database_url)
        result["index_cost"] = index_cost(database_url)
    stored = sum(t["rows"] for t in sizes.values())
    result.update(
        emitted=emitted,
        records_per_llm_call={
            kind: round(count / emitted["calls"], 3) for kind, count in _by_kind(memory).items()
        },
        stream_memory=memory,
        tables=sizes,
        rows_stored=stored,
        worker_cpu_s=round(worker_cpu_s, 3),
        worker_cpu_us_per_row=round(worker_cpu_s / stored * 1e6, 1) if stored else None,
    )
    small = ctx.namespace("capacity-small")
    try:
        result["small_batches"] = isolated.call(
            emit_workload,
            ctx.redis_url,
            small.namespace,
            ctx.sizes.capacity_small_batch_calls,
            SMALL_BATCH_RECORDS,
            timeout_s=600,
        )
        result["small_batches"]["stream_memory"] = stream_memory(ctx.redis_url, small.namespace)
    finally:
        ctx.drop_namespace(small)
    return result


def _by_kind(memory: dict[str, Any]) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for stream in memory["streams"].values():
        for kind, count in stream["records_by_kind"].items():
            kinds[kind] = kinds.get(kind, 0) + count
    return kinds


def rows(capacity: dict[str, Any]) -> list[Row]:
    """The section's figures as rows of the harness's table (no targets: inputs to
    the capacity model)."""
    if not capacity:
        return []
    traces = get(capacity, "tables", "llm_traces") or {}
    copy = get(capacity, "index_cost", "rows_per_s") or {}
    per_call = capacity.get("records_per_llm_call", {})
    small = capacity.get("small_batches", {})
    kinds = ", ".join(f"{kind} {count:g}" for kind, count in sorted(per_call.items()))
    result = [
        Row(SECTION, "records per LLM call (hook workload)", "records",
            round(sum(per_call.values()), 3), None, "lower", note=f"by kind: {kinds}"),
        Row(SECTION, "stream memory per 1M records", "MB",
            get(capacity, "stream_memory", "mb_per_million_records"), None, "lower",
            note=f"{get(capacity, 'stream_memory', 'bytes_per_record')} B per record"),
        Row(SECTION, "stream memory per 1M records, batches of 3", "MB",
            get(small, "stream_memory", "mb_per_million_records"), None, "lower"),
        Row(SECTION, "Redis time per batch call, batches of 3", "µs",
            small.get("redis_us_per_fcall"), None, "lower",
            note=f"{small.get('redis_us_per_record')} µs per record; large batches "
            f"{get(capacity, 'emitted', 'redis_us_per_record')} µs per record"),
        Row(SECTION, "PostgreSQL bytes per llm_traces row", "B",
            traces.get("bytes_per_row"), None, "lower",
            note=f"of which indexes {traces.get('index_bytes_per_row')}"),
        Row(SECTION, "worker CPU per stored row (sample, with start-up)", "µs",
            capacity.get("worker_cpu_us_per_row"), None, "lower"),
    ]  # fmt: skip
    for table in ("tool_calls", "plans"):
        result.append(
            Row(SECTION, f"PostgreSQL bytes per {table} row", "B",
                get(capacity, "tables", table, "bytes_per_row"), None, "lower")
        )  # fmt: skip
    for variant in INDEX_VARIANTS:
        result.append(
            Row(SECTION, f"COPY into llm_traces shape, {variant.replace('_', ' ')}", "rows/s",
                copy.get(variant), None, "higher",
                note=None if copy else get(capacity, "index_cost", "how"))
        )  # fmt: skip
    return result
