"""Steps of llm_trace.feature. Records go in through the real ``Emitter``; the
worker and the migrations run as ``fleettrace`` processes; what is stored is read
back from PostgreSQL and Redis directly, so a step checks the store, not a copy of
the code that wrote it."""

from __future__ import annotations

import math
from datetime import datetime

import orjson
from behave import given, then, when

from fleettrace import hooks
from fleettrace.codec import Kind, encode_lines, encode_record, new_batch_id
from fleettrace.emitter import Emitter, EmitterSettings
from fleettrace.live import is_over_budget, plan_cost_usd, read_live
from fleettrace.metrics import MetricKey
from fleettrace.model import LLMTrace
from fleettrace.plans import read_plan
from fleettrace.pricing import price_trace
from fleettrace_worker.keys import DEAD_POSITION, DEAD_REASON, DEAD_RECORD, PERSIST_GROUP
from fleettrace_worker.store.database import create_pool
from fleettrace_worker.store.repository import LLMTraceRepository

#: How a table cell becomes the value of an LLMTrace field; other fields are text.
PARSERS = {
    "prompt_tokens": int,
    "completion_tokens": int,
    "retry_count": int,
    "cost_usd": float,
    "latency_ms": float,
    "streaming": lambda text: {"true": True, "false": False}[text],
    "tool_calls": lambda text: [name.strip() for name in text.split(",") if name.strip()],
    "started_at": datetime.fromisoformat,
}
DEFAULTS = {"provider": "openai", "model": "gpt-4o"}


def trace_from_cells(cells: dict[str, str]) -> LLMTrace:
    """An LLMTrace from table cells; an empty cell means the field was not given."""
    fields = dict(DEFAULTS)
    for name, text in cells.items():
        if text.strip():
            fields[name] = PARSERS.get(name, str)(text.strip())
    return LLMTrace(**fields)


def new_emitter(context) -> Emitter:
    emitter = Emitter(
        EmitterSettings(redis_url=context.fleet.redis_url, namespace=context.fleet.keys.namespace)
    )
    context.fleet.emitters.append(emitter)
    return emitter


def record(context, traces: list[LLMTrace]) -> None:
    """Record through an Emitter as agent code does, and wait until Redis has them."""
    emitter = new_emitter(context)
    for trace in traces:
        emitter.record(trace)
    assert emitter.flush(timeout_s=30.0), f"the emitter could not deliver: {emitter.stats}"
    context.recorded.extend(traces)


def repository(context) -> LLMTraceRepository:
    pool = create_pool(context.fleet.database_url)
    context.fleet.pools.append(pool)
    return LLMTraceRepository(pool)


# -- given ------------------------------------------------------------------------------


@given('a fresh trace store that "fleettrace migrate" has prepared')
def step_migrated(context):
    result = context.fleet.run("migrate")
    assert result.returncode == 0, f"fleettrace migrate exited {result.returncode}: {result.stderr}"
    context.recorded = []


# -- when -------------------------------------------------------------------------------


@when("an agent records this LLM call:")
def step_record_one(context):
    record(context, [trace_from_cells({row["field"]: row["value"] for row in context.table})])


@when("an agent records these LLM calls, in this order:")
def step_record_many(context):
    rows = [dict(zip(row.headings, row.cells, strict=True)) for row in context.table]
    record(context, [trace_from_cells(cells) for cells in rows])


@when(
    'an agent records an LLM call of "{provider}" "{model}" with {prompt:d} prompt and '
    "{completion:d} completion tokens and no cost"
)
def step_record_unpriced(context, provider, model, prompt, completion):
    record(
        context,
        [
            LLMTrace(
                provider=provider, model=model, prompt_tokens=prompt, completion_tokens=completion
            )
        ],
    )


@when(
    "a batch arrives holding a good call, a call whose prompt_tokens is -5, and another good call"
)
def step_batch_with_bad_record(context):
    good = [LLMTrace(provider="openai", model="gpt-4o", prompt_tokens=10 * i) for i in (1, 3)]
    bad = orjson.loads(encode_record(LLMTrace(provider="openai", model="gpt-4o")))
    bad["prompt_tokens"] = -5
    context.bad_line = orjson.dumps(bad)
    lines = [encode_record(good[0]), context.bad_line, encode_record(good[1])]
    entry = encode_lines(Kind.TRACE, lines, new_batch_id())
    context.fleet.redis.xadd(context.fleet.keys.traces, entry)
    context.recorded.extend(good)


class ToolFailed(Exception):
    """What a tool raises in the scenarios: the hook records it and lets it through."""


class LLMFailure(Exception):
    """Base of the errors an LLM call raises in the scenarios."""


def raised(message: str) -> LLMFailure:
    """An exception whose class name and message read as ``message`` ("Name: text")."""
    name, _, text = message.partition(":")
    return type(name.strip(), (LLMFailure,), {})(text.strip())


@when(
    'an agent runs plan "{plan_id}" in which the actor "{actor_name}" makes these LLM calls, '
    "one decision each:"
)
def step_run_plan(context, plan_id, actor_name):
    emitter = new_emitter(context)
    with hooks.plan(plan_id, emitter=emitter), hooks.actor(actor_name, emitter=emitter) as act:
        for row in context.table:
            with hooks.decision(emitter=emitter):
                call = act.llm(
                    row["provider"],
                    row["model"],
                    prompt_tokens=int(row["prompt_tokens"]),
                    completion_tokens=int(row["completion_tokens"]),
                    retry_count=int(row["retry_count"]),
                )
                failure = row["fails with"].strip()
                try:
                    with call:
                        if failure:
                            raise raised(failure)
                except LLMFailure as error:
                    assert failure and str(error) in failure, f"unexpected {error!r}"
                context.recorded.append(call.trace)
    assert emitter.flush(timeout_s=30.0), f"the emitter could not deliver: {emitter.stats}"


@when('the tool "{name}" succeeds {ok:d} times and fails {failed:d} time')
def step_tool_outcomes(context, name, ok, failed):
    emitter = new_emitter(context)
    for _ in range(ok):
        with hooks.tool(name, emitter=emitter):
            pass
    for _ in range(failed):
        try:
            with hooks.tool(name, emitter=emitter):
                raise ToolFailed(name)
        except ToolFailed:
            pass
    assert emitter.flush(timeout_s=30.0), f"the emitter could not deliver: {emitter.stats}"


@when("the worker has processed everything waiting")
def step_worker_burst(context):
    result = context.fleet.run("worker", "--burst")
    assert result.returncode == 0, (
        f"fleettrace worker --burst exited {result.returncode}: {result.stderr}"
    )


# -- then -------------------------------------------------------------------------------


def stored_count(context) -> int:
    with context.fleet.connect_db() as conn:
        return conn.execute("SELECT count(*) FROM llm_traces").fetchone()[0]


@then("the llm_traces table holds {count:d} row")
@then("the llm_traces table holds {count:d} rows")
def step_row_count(context, count):
    assert stored_count(context) == count, f"{stored_count(context)} rows, expected {count}"


@then("the llm_traces table holds the {count:d} good calls")
def step_good_rows(context, count):
    with context.fleet.connect_db() as conn:
        rows = conn.execute("SELECT trace_id, prompt_tokens FROM llm_traces").fetchall()
    expected = {(t.trace_id, t.prompt_tokens) for t in context.recorded}
    assert len(expected) == count
    assert set(rows) == expected, f"stored {sorted(rows)}, expected {sorted(expected)}"


@then("the row of that call holds every field exactly as recorded")
def step_row_matches(context):
    (trace,) = context.recorded
    names = list(LLMTrace.model_fields)
    with context.fleet.connect_db() as conn:
        row = conn.execute(
            f"SELECT {', '.join(names)} FROM llm_traces WHERE trace_id = %s", (trace.trace_id,)
        ).fetchone()
    assert row is not None, f"no row for trace {trace.trace_id}"
    for name, column in zip(names, row, strict=True):
        recorded = getattr(trace, name)
        stored = column
        if name in ("tags", "metadata") and column is None and not recorded:
            # No tags or metadata are stored as NULL (schema 4: nothing in their indexes).
            stored = type(recorded)()
        assert stored == recorded, f"{name}: stored {stored!r}, recorded {recorded!r}"
        assert type(stored) is type(recorded), f"{name}: stored as {type(stored).__name__}"


@then("the stored call costs {cost:g} USD")
def step_stored_cost(context, cost):
    with context.fleet.connect_db() as conn:
        (stored,) = conn.execute("SELECT cost_usd FROM llm_traces").fetchone()
    assert stored is not None, "the call was stored without a price"
    assert math.isclose(stored, cost, rel_tol=1e-9), f"stored cost {stored}, expected {cost}"


@then('the traces of plan "{plan_id}" are the decisions "{decisions}" in that order')
def step_plan_order(context, plan_id, decisions):
    found = [t.decision_id for t in repository(context).by_plan(plan_id)]
    expected = [d.strip() for d in decisions.split(",")]
    assert found == expected, f"plan {plan_id}: {found}, expected {expected}"


@then("the cost summary by model reads:")
def step_cost_summary(context):
    rows = {row.group["model"]: row for row in repository(context).cost_summary(["model"])}
    context.summary = rows
    expected_models = {line["model"] for line in context.table}
    assert set(rows) == expected_models, f"models {sorted(rows)}, expected {expected_models}"
    for line in context.table:
        row = rows[line["model"]]
        assert row.calls == int(line["calls"]), f"{line['model']} calls {row.calls}"
        assert row.prompt_tokens == int(line["prompt_tokens"]), f"{line['model']} prompt tokens"
        assert row.completion_tokens == int(line["completion_tokens"]), (
            f"{line['model']} completion tokens {row.completion_tokens}"
        )
        assert math.isclose(row.cost_usd, float(line["cost_usd"]), rel_tol=1e-9), (
            f"{line['model']} cost {row.cost_usd}, expected {line['cost_usd']}"
        )
        assert round(row.error_rate * row.calls) == int(line["errors"]), (
            f"{line['model']} error rate {row.error_rate}"
        )


@then("the summary adds up to the {calls:d} calls recorded, {total:g} USD in all")
def step_summary_total(context, calls, total):
    rows = context.summary.values()
    assert sum(r.calls for r in rows) == calls == len(context.recorded)
    summed = sum(r.cost_usd for r in rows)
    recorded = sum(t.cost_usd for t in context.recorded)
    assert math.isclose(summed, total, rel_tol=1e-9), f"summary total {summed}, expected {total}"
    assert math.isclose(summed, recorded, rel_tol=1e-9), f"recorded total {recorded}"


@then('the dead-letter stream holds {count:d} record whose reason names "{field}"')
def step_dead_letter(context, count, field):
    entries = context.fleet.redis.xrange(context.fleet.keys.dead_letters(PERSIST_GROUP))
    assert len(entries) == count, f"{len(entries)} dead letters, expected {count}: {entries}"
    _, letter = entries[0]
    assert field.encode() in letter[DEAD_REASON], f"reason: {letter[DEAD_REASON]!r}"
    assert letter[DEAD_RECORD] == context.bad_line, "the dead letter is not the record as sent"
    assert letter[DEAD_POSITION] == b"1"


@then("nothing is left pending on the trace stream")
def step_nothing_pending(context):
    pending = context.fleet.redis.xpending(context.fleet.keys.traces, PERSIST_GROUP)
    assert pending["pending"] == 0, f"pending: {pending}"


@then("the live counters read, where a retry count counts the calls that retried:")
def step_live_counters(context):
    live = read_live(context.fleet.redis, context.fleet.keys)
    series = {(s.key.value, s.labels): s for s in live}
    for line in context.table:
        labels = tuple(
            tuple(part.strip().split("=", 1)) for part in line["labels"].split(",") if part.strip()
        )
        found = series.get((line["metric"], labels))
        if MetricKey(line["metric"]).spec.per_plan:  # counted in the plan's own hash
            plan = read_plan(context.fleet.redis, context.fleet.keys, dict(labels)["plan"])
            found = next((s for s in plan.series if s.key.value == line["metric"]), None)
        assert found is not None, f"no live series {line['metric']} {line['labels']}"
        assert found.count == int(line["count"]), (
            f"{line['metric']} {line['labels']}: count {found.count}"
        )
        if not line["sum"].strip():
            continue  # a duration: how long the block took is not for the scenario to say
        assert math.isclose(found.sum, float(line["sum"])), (
            f"{line['metric']} {line['labels']}: sum {found.sum}"
        )


@then('the live cost of plan "{plan_id}" equals the sum of its calls\' costs')
def step_live_plan_cost(context, plan_id):
    # The calls the hooks made leave the cost to fleettrace: the sender priced them.
    expected = sum(price_trace(t) or 0 for t in context.recorded if t.plan_id == plan_id)
    assert expected > 0
    live = plan_cost_usd(context.fleet.redis, context.fleet.keys, plan_id)
    assert math.isclose(live, expected, rel_tol=1e-9), f"live {live}, recorded {expected}"
    context.plan_cost = (plan_id, live)


@then("a budget check of {budget:g} USD says the plan is over budget")
def step_over_budget(context, budget):
    plan_id, _ = context.plan_cost
    assert is_over_budget(context.fleet.redis, context.fleet.keys, plan_id, budget)


@then("a budget check of {budget:g} USD says the plan is within budget")
def step_within_budget(context, budget):
    plan_id, _ = context.plan_cost
    assert not is_over_budget(context.fleet.redis, context.fleet.keys, plan_id, budget)
