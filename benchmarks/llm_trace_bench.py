"""ASV benchmarks of the write path of an ``LLMTrace``, one stage at a time.

Every benchmark handles one batch of ``BATCH_RECORDS`` records, so a stage's
throughput is ``BATCH_RECORDS / time`` records per second; the stages are the ones a
record passes through on its way from agent code to a row:

    hook        actor.llm enter, update, exit     hooks.py, capture.py (the hooks section's calls)
    validation  LLMTrace(...)                     model.py
    pricing     Pricer.price_records              pricing.py, on the sender thread
    encoding    encode_batch                      codec.py
    record()    Emitter.record, sender running    emitter.py
    sending     one batch script call per batch   emitter.py, batch_script.py
    decoding    decode_entry (with validation)    codec.py, as the worker calls it
    storing     LLMTraceRepository.store          repository.py (COPY, commit)

Benchmarks that need Redis or PostgreSQL make a fresh namespace or database in
``setup`` and remove it in ``teardown``, so they can run next to the test suites.
"""

from __future__ import annotations

import os
import random
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
import redis

from benchmarks.load.records import ACTORS, PLAN_METADATA, PLAN_TAGS, HookWorkload, RateLimited
from fleettrace.batch_script import BatchCall
from fleettrace.codec import Kind, decode_entry, encode_batch, new_batch_id
from fleettrace.emitter import Emitter, EmitterSettings
from fleettrace.hooks import actor, plan
from fleettrace.keys import Keys
from fleettrace.model import LLMTrace
from fleettrace.pricing import Pricer
from fleettrace_worker.store.database import create_pool
from fleettrace_worker.store.migrations import migrate
from fleettrace_worker.store.repository import LLMTraceRepository

BATCH_RECORDS = 1000
REDIS_URL = os.environ.get("FLEETTRACE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
#: An admin URL: the benchmarks create and drop a database of their own there.
PG_ADMIN_URL = os.environ.get(
    "FLEETTRACE_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
#: Stages that write keep to one call per timing so that every call writes new data:
#: a batch id or trace id applied twice would be skipped and time nothing.
ONE_SHOT = {"number": 1, "repeat": (1, 20, 30.0), "warmup_time": 0.0}


def varied_tokens(index: int) -> dict[str, int]:
    """Token counts that vary call to call, as real calls do (a cache keyed by exact
    counts would almost never hit): long-tailed prompts, some cached, some reasoning."""
    rng = random.Random(index)
    prompt = int(rng.lognormvariate(7.5, 1.2)) % 400_000 + 1
    completion = int(rng.lognormvariate(5.5, 1.0)) % 30_000 + 1
    tokens = {"prompt_tokens": prompt, "completion_tokens": completion}
    if index % 5 < 2:
        tokens["cache_read_tokens"] = rng.randint(0, prompt)
    if index % 5 == 4:
        tokens["reasoning_tokens"] = rng.randint(0, completion)
    return tokens


def trace_fields(index: int) -> dict[str, Any]:
    """The keyword arguments of one realistic LLM call, varied by ``index``."""
    return {
        "trace_id": uuid.uuid4(),
        "plan_id": f"plan-{index // 50}",
        "decision_id": f"decision-{index // 5}",
        "actor": ("planner", "coder", "reviewer")[index % 3],
        "provider": "openai",
        "model": ("gpt-4o", "gpt-4o-mini")[index % 2],
        **varied_tokens(index),
        "latency_ms": 350.0 + index % 900,
        "tool_calls": ["search", "read_file"][: index % 3],
        "context_hash": f"{index:064x}",
        "streaming": index % 4 == 0,
        "retry_count": index % 7,
        "error": "RateLimitError: slow down" if index % 50 == 0 else None,
        "started_at": datetime(2026, 11, 27, 12, 0, tzinfo=UTC),
    }


def trace_batch(count: int = BATCH_RECORDS) -> list[LLMTrace]:
    return [LLMTrace(**trace_fields(i)) for i in range(count)]


class TraceValidation:
    """Building and validating records, as the hooks do for every call.

    With ``cost_usd`` given or left out the model only validates: pricing is the
    sender thread's (``TracePricing``), not the caller's.
    """

    def setup(self) -> None:
        self.fields = [trace_fields(i) for i in range(BATCH_RECORDS)]
        self.priced_fields = [{**fields, "cost_usd": 0.01} for fields in self.fields]

    def time_validate_batch(self) -> None:
        for fields in self.priced_fields:
            LLMTrace(**fields)

    def time_validate_cost_left_out_batch(self) -> None:
        for fields in self.fields:
            LLMTrace(**fields)


class TracePricing:
    """Pricing a batch on the sender thread: one price lookup per (provider, model,
    price period), then the compiled price applied to each call's varied tokens."""

    def setup(self) -> None:
        self.records = trace_batch()
        self.pricer = Pricer()
        self.pricer.price_records(self.records[:10])  # the per-model lookups, once

    def time_price_batch(self) -> None:
        self.pricer.price_records(self.records)


class HookPath:
    """What agent code pays per LLM call, on the calls of the load harness's
    ``hooks`` section (:class:`benchmarks.load.records.HookWorkload`: varied tokens,
    30 % streaming, 5 % failing and retried, inside an actor of a plan with tags and
    metadata): ``actor.llm`` entered, updated and ended, the record made, priced and
    sent by the sender thread meanwhile. ``python -m benchmarks.load --only hooks``
    gives the same path's p50/p99 per call."""

    def setup(self) -> None:
        self.keys = fresh_keys()
        self.emitter = Emitter(EmitterSettings(redis_url=REDIS_URL, namespace=self.keys.namespace))
        self.workload = HookWorkload(BATCH_RECORDS)

    def teardown(self) -> None:
        self.emitter.close()
        delete_namespace(self.keys)

    def time_llm_hook_batch(self) -> None:
        emitter = self.emitter
        with (
            plan(emitter=emitter, tags=PLAN_TAGS, metadata=PLAN_METADATA),
            actor(ACTORS[0], emitter=emitter) as agent,
        ):
            for provider, model, usage, streaming, fails in self.workload.calls:
                if fails:
                    try:
                        with agent.llm(provider, model, streaming=streaming):
                            raise RateLimited("RateLimitError: slow down")
                    except RateLimited:
                        pass
                with agent.llm(
                    provider, model, streaming=streaming, retry_count=int(fails)
                ) as call:
                    if streaming:
                        call.first_token()
                    call.update(**usage)


class TraceEncoding:
    """Turning a batch of records into one stream entry."""

    def setup(self) -> None:
        self.records = trace_batch()
        self.batch_id = new_batch_id()

    def time_encode_batch(self) -> None:
        encode_batch(Kind.TRACE, self.records, self.batch_id)


def fresh_keys() -> Keys:
    return Keys(f"bench-{uuid.uuid4().hex[:12]}")


def delete_namespace(keys: Keys) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=f"{keys.prefix}*", count=1000):
        client.delete(key)
    client.close()


class EmitterRecord:
    """``record()`` on the agent's hot path while the sender thread drains to Redis."""

    def setup(self) -> None:
        self.keys = fresh_keys()
        self.emitter = Emitter(EmitterSettings(redis_url=REDIS_URL, namespace=self.keys.namespace))
        self.records = trace_batch()

    def teardown(self) -> None:
        self.emitter.close()
        delete_namespace(self.keys)

    def time_record_batch(self) -> None:
        record = self.emitter.record
        for trace in self.records:
            record(trace)


class RedisSending:
    """One batch applied to Redis: its stream entry and summed counter deltas in one
    script call, as the emitter's sender thread sends it."""

    number = ONE_SHOT["number"]
    repeat = ONE_SHOT["repeat"]
    warmup_time = ONE_SHOT["warmup_time"]

    def setup(self) -> None:
        self.keys = fresh_keys()
        self.emitter = Emitter(EmitterSettings(redis_url=REDIS_URL, namespace=self.keys.namespace))
        records: list[Any] = trace_batch()
        # Each call needs a batch number of its own, sent in increasing order: a batch
        # whose number is not above the last applied one is skipped. pop() takes the last.
        self.calls: list[BatchCall] = [
            call for _ in range(25) for call in self.emitter._encode(records, 0)
        ]
        self.calls.reverse()

    def teardown(self) -> None:
        self.emitter.close()
        delete_namespace(self.keys)

    def time_send_batch(self) -> None:
        self.emitter._send(self.calls.pop())


class WorkerDecoding:
    """Checking an entry's envelope and validating each of its records in the worker."""

    def setup(self) -> None:
        self.fields = encode_batch(Kind.TRACE, trace_batch(), new_batch_id())

    def time_decode_and_validate_batch(self) -> None:
        decode_entry(self.fields)


class RepositoryWrite:
    """A batch of new rows written and committed to ``llm_traces``, as the worker's
    persist step does before it acknowledges the batch."""

    number = ONE_SHOT["number"]
    repeat = ONE_SHOT["repeat"]
    warmup_time = ONE_SHOT["warmup_time"]

    def setup(self) -> None:
        self.database = f"fleettrace_bench_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.database}"')
        self.pool = create_pool(f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{self.database}")
        migrate(self.pool)
        self.repository = LLMTraceRepository(self.pool)
        # New trace ids for every call: a row already stored is skipped, not written.
        self.batches = [trace_batch() for _ in range(25)]

    def teardown(self) -> None:
        self.pool.close()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    def time_store_batch(self) -> None:
        self.repository.store(self.batches.pop())
