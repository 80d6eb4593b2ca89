"""The two pipelines the harness drives, behind one shape.

``fleettrace`` is the real pipeline: :class:`fleettrace.emitter.Emitter` on the agent
side, the ``fleettrace worker`` command on the other. ``baseline`` is
:mod:`benchmarks.load.baseline`. Functions here run inside measurement processes
(see :mod:`benchmarks.load.isolated`), so they take and return plain values.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import psycopg

from benchmarks.load import baseline
from benchmarks.load.records import TraceFactory

FLEETTRACE: Final = "fleettrace"
EMITTER: Final = "fleettrace-emitter"
BASELINE: Final = "baseline"
PIPELINES: Final = (FLEETTRACE, BASELINE)
#: Settings (JSON) every emitter the harness makes gets, and extra arguments of every
#: ``fleettrace worker`` it starts: set by ``--emitter-setting`` and ``--worker-arg``
#: to try a tuning; measurement processes inherit them.
EMITTER_SETTINGS_VARIABLE: Final = "FLEETTRACE_BENCH_EMITTER_SETTINGS"
WORKER_ARGS_VARIABLE: Final = "FLEETTRACE_BENCH_WORKER_ARGS"
#: Distinct records a producer measurement cycles through, so that building them is
#: not part of what is measured and memory stays flat however many are sent.
DISTINCT_RECORDS: Final = 20_000


@dataclass(frozen=True)
class Pipeline:
    name: str
    table: str
    group: str


def pipeline(name: str) -> Pipeline:
    if name == FLEETTRACE:
        from fleettrace_worker.keys import PERSIST_GROUP
        from fleettrace_worker.store.repository import TRACES_TABLE

        return Pipeline(FLEETTRACE, TRACES_TABLE, PERSIST_GROUP)
    return Pipeline(BASELINE, baseline.TABLE, baseline.GROUP)


def available() -> dict[str, str | None]:
    """Which pipelines can run: ``None``, or why not (a piece that is missing).

    ``fleettrace-emitter`` is the agent side alone (hot path, producer, emitter memory);
    ``fleettrace`` needs the worker command too."""
    found: dict[str, str | None] = {BASELINE: None}
    try:
        from fleettrace.emitter import Emitter, EmitterSettings  # noqa: F401

        found[EMITTER] = None
    except ImportError as error:
        found[EMITTER] = f"ImportError: {error}"
    try:
        from fleettrace_worker.cli import COMMANDS
        from fleettrace_worker.store import migrations, repository  # noqa: F401

        found[FLEETTRACE] = None if "worker" in COMMANDS else "no `fleettrace worker` command yet"
    except ImportError as error:
        found[FLEETTRACE] = f"ImportError: {error}"
    if found[EMITTER] is not None:
        found[FLEETTRACE] = found[EMITTER]
    return found


def prepare_database(name: str, database_url: str) -> None:
    """fleettrace's migrations for both: the baseline table copies ``llm_traces`` with
    its indexes and checks, so both pipelines write into the same kind of table."""
    from fleettrace_worker.store import migrations

    with psycopg.connect(database_url) as conn:
        migrations.migrate(conn)
        conn.commit()
    if name == BASELINE:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                f"CREATE TABLE {baseline.TABLE} (LIKE {pipeline(FLEETTRACE).table} INCLUDING ALL)"
            )


def worker_argv(
    name: str, redis_url: str, namespace: str, database_url: str, *, burst: bool, index: int = 0
) -> list[str]:
    """The command line of worker number ``index`` (each gets its own consumer name)."""
    if name == FLEETTRACE:
        argv = ["-m", "fleettrace_worker.cli", "worker", "--only", "persist"]
        argv += ["--consumer", f"bench-{index}"]
        argv += shlex.split(os.environ.get(WORKER_ARGS_VARIABLE, ""))
    else:
        argv = ["-m", "benchmarks.load.baseline"]
    argv += ["--redis-url", redis_url, "--namespace", namespace, "--database-url", database_url]
    return [*argv, "--burst"] if burst else argv


# --- producers (run in measurement processes) ------------------------------------------


def _emitter(redis_url: str, namespace: str, **settings: Any) -> Any:
    from fleettrace.emitter import Emitter, EmitterSettings

    tuned = {**json.loads(os.environ.get(EMITTER_SETTINGS_VARIABLE) or "{}"), **settings}
    return Emitter(EmitterSettings(redis_url=redis_url, namespace=namespace, **tuned))


def traces(count: int, seed: int = 7) -> list[Any]:
    from fleettrace.model import LLMTrace

    factory = TraceFactory(seed)
    return [LLMTrace(**factory.fields()) for _ in range(count)]


def produce(name: str, redis_url: str, namespace: str, records: int) -> dict[str, Any]:
    """Records per second one process gets into Redis, stream entries and live
    counters included, from ``record()`` of the first to the flush of the last."""
    if name == BASELINE:
        return _produce_baseline(redis_url, namespace, records)
    made = traces(min(records, DISTINCT_RECORDS))
    gc.collect()
    # A loop that only records outruns any sender; "block" makes it wait for room
    # instead of dropping, so what is counted is what reached Redis.
    emitter = _emitter(redis_url, namespace, overflow="block", block_timeout_s=10.0)
    record = emitter.record
    started = time.perf_counter()
    for trace in itertools.islice(itertools.cycle(made), records):
        record(trace)
    flushed = emitter.flush(timeout_s=300)
    elapsed = time.perf_counter() - started
    stats = emitter.stats
    encode_us = _encode_us_per_record(emitter, made, stats.batches and records // stats.batches)
    emitter.close()
    return {
        "records": records,
        "seconds": elapsed,
        "flushed": flushed,
        "sent": stats.sent,
        "dropped": stats.dropped,
        "batches": stats.batches,
        "expected_prompt_tokens": _prompt_tokens(made, records),
        "sender_encode_us_per_record": encode_us,
    }


def _encode_us_per_record(emitter: Any, made: list[Any], batch: int) -> float | None:
    """What the sender thread spends per record before its call to Redis (pricing,
    counting the live deltas, encoding the entry, the call's arguments and redis-py's
    bytes of the call) on batches of the run's mean size: the best of 5, in µs. The
    sender's own ceiling."""
    if batch < 1:
        return None
    import redis

    from fleettrace.keys import APPLY_FUNCTION
    from fleettrace.packing import command_packer

    records = [made[i % len(made)] for i in range(batch)]
    # The packing of the call into bytes too, as the sender's client does it
    # (fleettrace.connection), on a connection that never opens.
    pack = redis.Connection(command_packer=command_packer()).pack_command

    def encode_and_pack() -> None:
        for call in emitter._encode(list(records)):
            pack("FCALL", APPLY_FUNCTION, len(call.keys), *call.keys, *call.args)

    best = min(_timed(encode_and_pack) for _ in range(5))
    return round(best / batch * 1e6, 3)


def _timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def _prompt_tokens(made: list[Any], records: int) -> int:
    full, rest = divmod(records, len(made))
    tokens = [t.prompt_tokens for t in made]
    return full * sum(tokens) + sum(tokens[:rest])


def _produce_baseline(redis_url: str, namespace: str, records: int) -> dict[str, Any]:
    import redis

    from fleettrace.keys import Keys

    factory = TraceFactory()
    made = [factory.fields() for _ in range(min(records, DISTINCT_RECORDS))]
    gc.collect()
    keys = Keys(namespace)
    client = redis.Redis.from_url(redis_url)
    pipe = client.pipeline(transaction=False)
    started = time.perf_counter()
    for index, fields in enumerate(itertools.islice(itertools.cycle(made), records)):
        baseline.add_record(pipe, keys, fields)
        if (index + 1) % baseline.PIPELINE_RECORDS == 0:
            pipe.execute()
    pipe.execute()
    elapsed = time.perf_counter() - started
    sent = int(client.xlen(baseline.stream(keys)))
    client.close()
    return {
        "records": records,
        "seconds": elapsed,
        "flushed": True,
        "sent": sent,
        "dropped": records - sent,
        "batches": sent,
        "expected_prompt_tokens": sum(f["prompt_tokens"] for f in made) * (records // len(made))
        + sum(f["prompt_tokens"] for f in made[: records % len(made)]),
    }


def prefill(name: str, redis_url: str, namespace: str, records: int, seed: int) -> int:
    """Put a backlog of distinct records in the stream as fast as the format allows:
    what producers left behind for a worker to drain (live counters are theirs, not
    the worker's, so they are not written here)."""
    if name == BASELINE:
        return baseline.prefill(redis_url, namespace, records)
    import redis

    from fleettrace.codec import Kind, encode_batch, new_batch_id
    from fleettrace.emitter import EmitterSettings
    from fleettrace.keys import Keys

    batch_records = EmitterSettings().max_batch_records
    keys = Keys(namespace)
    client = redis.Redis.from_url(redis_url)
    factory = TraceFactory(seed)
    from fleettrace.model import LLMTrace

    pipe = client.pipeline(transaction=False)
    left = records
    while left:
        size = min(batch_records, left)
        batch = [LLMTrace(**factory.fields()) for _ in range(size)]
        pipe.xadd(keys.traces, encode_batch(Kind.TRACE, batch, new_batch_id()))  # type: ignore[arg-type]
        left -= size
        if len(pipe) >= 10:
            pipe.execute()
    pipe.execute()
    client.close()
    return records


class Sender:
    """One record at a time into either pipeline, for a paced (offered) load."""

    def __init__(self, name: str, redis_url: str, namespace: str) -> None:
        self.name = name
        if name == FLEETTRACE:
            from fleettrace.model import LLMTrace

            self._emitter = _emitter(redis_url, namespace)
            record = self._emitter.record
            self.send: Callable[[dict[str, Any]], None] = lambda fields: record(LLMTrace(**fields))
            self.tick: Callable[[], None] = lambda: None
        else:
            self._paced = baseline.PacedSender(redis_url, namespace)
            self.send = self._paced.send
            self.tick = self._paced.tick

    def close(self) -> dict[str, Any]:
        if self.name == FLEETTRACE:
            flushed = self._emitter.flush(timeout_s=60)
            stats = self._emitter.stats
            self._emitter.close()
            return {"flushed": flushed, "dropped": stats.dropped}
        self._paced.close()
        return {"flushed": True, "dropped": 0}


def offer(  # noqa: PLR0917 (called positionally by multiprocessing)
    name: str, redis_url: str, namespace: str, rate: int, duration_s: float, produced: Any
) -> dict[str, Any]:
    """Send ``rate`` records per second for ``duration_s``: each record is made (its
    ``started_at`` taken) the moment it is due and handed over at once."""
    sender = Sender(name, redis_url, namespace)
    factory = TraceFactory(seed=rate)
    send, tick, fields = sender.send, sender.tick, factory.fields
    sent = 0
    total = int(duration_s * rate)
    started = time.monotonic()
    end = started + duration_s
    while True:
        now = time.monotonic()
        if now >= end:
            break
        # At most 256 records between two looks at the clock, so a producer that has
        # fallen behind still stops on time (and reports the rate it achieved).
        burst = min(min(int((now - started) * rate), total) - sent, 256)
        for _ in range(burst):
            send(fields())
        sent += max(burst, 0)
        produced.value = sent
        tick()
        if burst <= 0:
            time.sleep(0.0005)
    elapsed = time.monotonic() - started
    closing = sender.close()
    return {"offered_rate": rate, "sent": sent, "seconds": elapsed, **closing}
