"""The straightforward pipeline every figure is compared with.

What a competent first version would do, with no packing or pre-aggregation: one
stream entry per record with one field per attribute; per record one XADD and six
HINCRBY(FLOAT)s of its live counters, in a redis-py pipeline executed every 500
records; a worker that XREADGROUPs 1,000 entries, validates each with the pydantic
model, inserts with ``executemany`` (``ON CONFLICT DO NOTHING``), commits and XACKs.

Its worker runs as its own process, like fleettrace's::

    python -m benchmarks.load.baseline --redis-url URL --namespace NS --database-url URL [--burst]
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Final

import orjson
import psycopg
import redis
from psycopg.types.json import Jsonb
from pydantic import ValidationError

from benchmarks.load.records import TraceFactory
from fleettrace.keys import Keys
from fleettrace.model import LLMTrace

GROUP: Final = "baseline"
TABLE: Final = "baseline_llm_traces"
PIPELINE_RECORDS: Final = 500
READ_COUNT: Final = 1_000
BLOCK_MS: Final = 100
COLUMNS: Final = tuple(LLMTrace.model_fields)
_OPTIONAL: Final = frozenset(
    name for name, info in LLMTrace.model_fields.items() if not info.is_required()
)

DDL: Final = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    trace_id uuid PRIMARY KEY,
    plan_id text,
    decision_id text,
    actor text,
    provider text NOT NULL,
    model text NOT NULL,
    prompt_tokens integer NOT NULL,
    completion_tokens integer NOT NULL,
    cost_usd double precision,
    latency_ms double precision NOT NULL,
    tool_calls text[] NOT NULL,
    context_hash text,
    streaming boolean NOT NULL,
    retry_count integer NOT NULL,
    error text,
    started_at timestamptz NOT NULL,
    ingested_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS {TABLE}_plan ON {TABLE} (plan_id, started_at);
CREATE INDEX IF NOT EXISTS {TABLE}_started ON {TABLE} (started_at);
"""
#: The row's columns: the record's fields, then the namespace every row carries.
_ROW_COLUMNS: Final = (*COLUMNS, "namespace")
_INSERT: Final = (
    f"INSERT INTO {TABLE} ({', '.join(_ROW_COLUMNS)}) "
    f"VALUES ({', '.join(['%s'] * len(_ROW_COLUMNS))}) "
    "ON CONFLICT (trace_id, started_at) DO NOTHING"
)


def _row(trace: LLMTrace, namespace: str) -> tuple[Any, ...]:
    """The values of one row, as a naive worker would write them: no tags or metadata
    as NULL, metadata as jsonb."""
    values = {c: trace.__dict__[c] for c in COLUMNS}
    values["tags"] = values["tags"] or None
    values["metadata"] = Jsonb(values["metadata"]) if values["metadata"] else None
    return (*values.values(), namespace)


def stream(keys: Keys) -> str:
    return f"{keys.prefix}:baseline"


def prepare_database(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(DDL)


# --- producer -------------------------------------------------------------------------


def flat_fields(fields: dict[str, Any]) -> dict[str, str]:
    flat: dict[str, str] = {}
    for name, value in fields.items():
        if value is None:
            flat[name] = ""
        elif isinstance(value, bool):
            flat[name] = "1" if value else "0"
        elif isinstance(value, list):
            flat[name] = orjson.dumps(value).decode()
        elif isinstance(value, datetime):
            flat[name] = value.isoformat()
        else:
            flat[name] = str(value)
    return flat


def add_record(pipe: Any, keys: Keys, fields: dict[str, Any], *, counters: bool = True) -> None:
    """One record: its entry and (like the emitter) the six live counters it moves."""
    pipe.xadd(stream(keys), flat_fields(fields))
    if not counters:
        return
    usage = keys.live("actor.token_usage")
    labels = f"provider={fields['provider']},model={fields['model']}"
    pipe.hincrby(usage, f"{labels},token_type=prompt|sum", fields["prompt_tokens"])
    pipe.hincrby(usage, f"{labels},token_type=completion|sum", fields["completion_tokens"])
    pipe.hincrby(usage, f"{labels},token_type=prompt|count", 1)
    pipe.hincrby(keys.live("llm.retries_count"), f"{labels}|sum", fields["retry_count"])
    pipe.hincrbyfloat(
        keys.live("plan.cost_usd"), f"plan={fields['plan_id']}|sum", fields["cost_usd"]
    )
    pipe.hincrby(keys.live("llm.retries_count"), f"{labels}|count", 1)


def produce(redis_url: str, namespace: str, records: int) -> dict[str, Any]:
    """Records per second one process gets into Redis, entries and counters included."""
    keys = Keys(namespace)
    client = redis.Redis.from_url(redis_url)
    factory = TraceFactory()
    pipe = client.pipeline(transaction=False)
    started = time.perf_counter()
    for index in range(records):
        add_record(pipe, keys, factory.fields())
        if (index + 1) % PIPELINE_RECORDS == 0:
            pipe.execute()
    pipe.execute()
    elapsed = time.perf_counter() - started
    stored = int(client.xlen(stream(keys)))
    client.close()
    return {"records": records, "seconds": elapsed, "stream_records": stored}


def prefill(redis_url: str, namespace: str, records: int) -> int:
    """Fill the stream as fast as this format allows (counters are not the worker's job)."""
    keys = Keys(namespace)
    client = redis.Redis.from_url(redis_url)
    factory = TraceFactory(seed=records)
    pipe = client.pipeline(transaction=False)
    for index in range(records):
        add_record(pipe, keys, factory.fields(), counters=False)
        if (index + 1) % PIPELINE_RECORDS == 0:
            pipe.execute()
    pipe.execute()
    client.close()
    return records


class PacedSender:
    """The baseline producer under a steady offered load: entries go out at least every
    few milliseconds, or every 500 records, whichever comes first."""

    FLUSH_INTERVAL_S: Final = 0.005

    def __init__(self, redis_url: str, namespace: str) -> None:
        self._keys = Keys(namespace)
        self._client = redis.Redis.from_url(redis_url)
        self._pipe = self._client.pipeline(transaction=False)
        self._pending = 0
        self._last = time.monotonic()

    def send(self, fields: dict[str, Any]) -> None:
        add_record(self._pipe, self._keys, fields)
        self._pending += 1
        if self._pending >= PIPELINE_RECORDS:
            self.flush()

    def tick(self) -> None:
        if self._pending and time.monotonic() - self._last >= self.FLUSH_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        self._pipe.execute()
        self._pending = 0
        self._last = time.monotonic()

    def close(self) -> None:
        self.flush()
        self._client.close()


# --- worker ---------------------------------------------------------------------------


def _record(fields: dict[bytes, bytes]) -> dict[str, Any]:
    values: dict[str, Any] = {k.decode(): v.decode() for k, v in fields.items()}
    values["tool_calls"] = orjson.loads(values["tool_calls"])
    for name in _OPTIONAL:
        if values.get(name) == "":
            values[name] = None
    return values


def validate(entries: Iterable[tuple[bytes, dict[bytes, bytes]]]) -> tuple[list[LLMTrace], int]:
    traces: list[LLMTrace] = []
    bad = 0
    for _entry_id, fields in entries:
        try:
            traces.append(LLMTrace.model_validate(_record(fields), strict=False))
        except (ValidationError, KeyError, ValueError):
            bad += 1
    return traces, bad


def insert(conn: psycopg.Connection[Any], traces: list[LLMTrace], namespace: str) -> None:
    with conn.cursor() as cur:
        cur.executemany(_INSERT, [_row(t, namespace) for t in traces])
    conn.commit()


def run_worker(redis_url: str, namespace: str, database_url: str, *, burst: bool) -> int:
    keys = Keys(namespace)
    client = redis.Redis.from_url(redis_url)
    name = stream(keys)
    try:
        client.xgroup_create(name, GROUP, id="0", mkstream=True)
    except redis.ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise
    consumer = f"baseline-{time.monotonic_ns()}"
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with psycopg.connect(database_url) as conn:
        while not stopping:
            reply = client.xreadgroup(
                GROUP, consumer, {name: ">"}, count=READ_COUNT, block=BLOCK_MS
            )
            entries = reply[0][1] if reply else []
            if not entries:
                if burst:
                    break
                continue
            traces, _bad = validate(entries)
            if traces:
                insert(conn, traces, keys.namespace)
            client.xack(name, GROUP, *[entry_id for entry_id, _ in entries])
    client.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load.baseline")
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--burst", action="store_true", help="exit once the stream is empty")
    args = parser.parse_args(argv)
    return run_worker(args.redis_url, args.namespace, args.database_url, burst=args.burst)


if __name__ == "__main__":
    sys.exit(main())
