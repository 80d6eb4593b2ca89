"""Counter deltas of a batch: one entry per distinct field, summed."""

from __future__ import annotations

import pytest

from fleettrace import MetricKey, MetricSample
from fleettrace.counters import aggregate
from fleettrace.metrics import GENAI_DURATION_BUCKETS_MS
from fleettrace.sketch import GAMMA, fine_stat, sum_parts
from tests.factories import llm_trace

CALL = {"cost_usd": 0.5}
TOKENS = "actor.token_usage"
PM = "provider=openai,model=gpt-4o"
LATENCY, COST = "llm.latency_ms", "llm.cost_usd"


def _of(key: str, mapping: dict[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    return {ref: amount for ref, amount in mapping.items() if ref[0] == key}


def test_every_call_counts_its_latency_and_each_priced_call_its_cost_per_model() -> None:
    deltas = aggregate(
        [
            llm_trace(cost_usd=0.25, latency_ms=120.5),
            llm_trace(cost_usd=0.5, latency_ms=80.25),
            llm_trace(cost_usd=None, latency_ms=3000.0),
            llm_trace(provider="acme", model="unknown-model", cost_usd=None, latency_ms=0.0),
        ],
        [],
    )
    inc, flt = deltas.increments, deltas.float_increments
    # The latency histogram counts every call, priced or not: its count is the calls.
    assert inc[(LATENCY, f"{PM}|count")] == 3
    assert flt[(LATENCY, f"{PM}|sum.whole")] + flt[(LATENCY, f"{PM}|sum.nanos")] / 1e9 == 3200.75
    acme = "provider=acme,model=unknown-model"
    assert inc[(LATENCY, f"{acme}|count")] == 1
    assert inc[(LATENCY, f"{acme}|d=z/10.0")] == 1  # a latency of 0 in the zero bucket
    fine = {field: n for (key, field), n in inc.items() if key == LATENCY and "|d=" in field}
    assert sum(fine.values()) == 4
    assert inc[(LATENCY, f"{PM}|{fine_stat(3000.0, GENAI_DURATION_BUCKETS_MS)}")] == 1
    # The cost counts the priced calls only: an unpriced call is not a call of cost 0.
    assert inc[(COST, f"{PM}|count")] == 2
    assert flt[(COST, f"{PM}|sum")] == 0.75
    assert (COST, f"{acme}|count") not in inc
    assert (COST, f"{acme}|sum") not in flt


def test_traces_sum_tokens_per_provider_model_and_token_type() -> None:
    deltas = aggregate(
        [
            llm_trace(CALL, prompt_tokens=10, completion_tokens=1),
            llm_trace(CALL, prompt_tokens=20, completion_tokens=2),
            llm_trace(CALL, model="o1", prompt_tokens=5),
        ],
        [],
    )
    assert _of(TOKENS, deltas.increments) == {
        (TOKENS, f"{PM},token_type=prompt|count"): 2,
        (TOKENS, f"{PM},token_type=completion|count"): 2,
        (TOKENS, "provider=openai,model=o1,token_type=prompt|count"): 1,
        (TOKENS, "provider=openai,model=o1,token_type=completion|count"): 1,
    }
    assert _of(TOKENS, deltas.float_increments) == {
        (TOKENS, f"{PM},token_type=prompt|sum"): 30,
        (TOKENS, f"{PM},token_type=completion|sum"): 3,
        (TOKENS, "provider=openai,model=o1,token_type=prompt|sum"): 5,
        (TOKENS, "provider=openai,model=o1,token_type=completion|sum"): 0,
    }
    assert deltas.values == {}
    assert deltas.metric_keys() == [TOKENS, COST, LATENCY]


def test_token_details_and_unknown_usage_get_token_types_of_their_own() -> None:
    deltas = aggregate(
        [
            llm_trace(
                CALL,
                prompt_tokens=10_000,
                completion_tokens=300,
                cache_read_tokens=9_000,
                cache_write_tokens=500,
                reasoning_tokens=200,
                audio_input_tokens=0,
                audio_output_tokens=7,
            ),
            llm_trace(CALL, prompt_tokens=1_000, completion_tokens=10, cache_read_tokens=100),
            llm_trace(CALL, prompt_tokens=None, completion_tokens=None),
            llm_trace(CALL, prompt_tokens=40, completion_tokens=None, reasoning_tokens=3),
        ],
        [],
    )
    counts = {
        ref[1].removeprefix(f"{PM},token_type=").removesuffix("|count"): n
        for ref, n in _of(TOKENS, deltas.increments).items()
    }
    sums = {
        ref[1].removeprefix(f"{PM},token_type=").removesuffix("|sum"): total
        for ref, total in _of(TOKENS, deltas.float_increments).items()
    }
    assert counts == {
        "prompt": 3,
        "completion": 2,
        "cache_read": 2,
        "cache_write": 1,
        "reasoning": 2,
        "audio_input": 1,
        "audio_output": 1,
        "unknown": 2,  # the calls whose prompt or completion tokens are unknown
    }
    assert sums == {
        "prompt": 11_040,
        "completion": 310,
        "cache_read": 9_100,
        "cache_write": 500,
        "reasoning": 203,
        "audio_input": 0,
        "audio_output": 7,
        "unknown": 0,  # never a guess added to a sum
    }


def test_retries_errors_and_plan_cost() -> None:
    deltas = aggregate(
        [
            llm_trace(
                CALL, retry_count=2, error="RateLimitError: slow", plan_id="p1", cost_usd=0.25
            ),
            llm_trace(
                CALL, retry_count=0, error="RateLimitError: again", plan_id="p1", cost_usd=0.5
            ),
            llm_trace(CALL, retry_count=3, error="Timeout", plan_id="p,2"),
            llm_trace(CALL, plan_id="p3", provider="acme", model="unknown-model", cost_usd=None),
        ],
        [],
    )
    inc, flt = deltas.increments, deltas.float_increments
    assert inc[("llm.retries_count", f"{PM}|count")] == 2
    assert flt[("llm.retries_count", f"{PM}|sum")] == 5
    assert inc[("llm.errors_count", f"{PM},error_type=RateLimitError|count")] == 2
    assert flt[("llm.errors_count", f"{PM},error_type=RateLimitError|sum")] == 2
    assert inc[("llm.errors_count", f"{PM},error_type=Timeout|count")] == 1
    # A plan's cost goes to the plan's own hash, keyed by plan id, never to a live hash.
    assert not any(key.startswith("plan.") for key, _ in (*inc, *flt))
    p_inc, p_flt = deltas.plan_increments, deltas.plan_float_increments
    assert p_inc == {
        ("p1", "plan.cost_usd||count"): 2,
        ("p,2", "plan.cost_usd||count"): 1,
    }
    assert p_flt[("p1", "plan.cost_usd||sum")] == pytest.approx(0.75)
    assert p_flt[("p,2", "plan.cost_usd||sum")] == 0.5  # the plan is the key, not a field
    assert deltas.plan_ids() == ["p1", "p,2"]
    # An unpriced call adds nothing to its plan's cost (unknown is not zero).
    assert "p3" not in deltas.plan_ids()
    assert ("llm.retries_count", "provider=acme,model=unknown-model|count") not in inc


def test_trace_outside_a_plan_adds_no_cost() -> None:
    deltas = aggregate([llm_trace(CALL)], [])
    assert deltas.metric_keys() == [TOKENS, COST, LATENCY]
    assert deltas.plan_ids() == []


def test_samples_labelled_with_a_plan_go_to_the_plans_hash() -> None:
    deltas = aggregate(
        [],
        [
            MetricSample(key=MetricKey.PLAN_DECISIONS_COUNT, value=1, labels={"plan": "a|b"}),
            MetricSample(key=MetricKey.PLAN_DECISIONS_COUNT, value=1, labels={"plan": "a|b"}),
            MetricSample(key=MetricKey.PLAN_CHILD_PLANS_COUNT, value=1, labels={"plan": "c"}),
            MetricSample(key=MetricKey.PLAN_DURATION_SECONDS, value=2, labels={"phase": "x"}),
        ],
    )
    assert deltas.plan_increments == {
        ("a|b", "plan.decisions_count||count"): 2,
        ("c", "plan.child_plans_count||count"): 1,
    }
    assert deltas.plan_float_increments == {
        ("a|b", "plan.decisions_count||sum"): 2,
        ("c", "plan.child_plans_count||sum"): 1,
    }
    assert deltas.plan_ids() == ["a|b", "c"]
    # plan.duration_seconds is labelled by phase, not plan: it stays fleet-wide.
    assert deltas.metric_keys() == ["plan.duration_seconds"]
    assert len(deltas) == 4 + 3


def test_samples_update_their_own_key_by_type() -> None:
    deltas = aggregate(
        [],
        [
            MetricSample(
                key=MetricKey.TOOL_ERROR_RATE, value=1, labels={"tool": "t", "outcome": "ok"}
            ),
            MetricSample(
                key=MetricKey.TOOL_ERROR_RATE, value=1, labels={"tool": "t", "outcome": "ok"}
            ),
            MetricSample(key=MetricKey.TOOL_INVOCATION_DURATION_MS, value=3, labels={"tool": "t"}),
            MetricSample(key=MetricKey.TOOL_INVOCATION_DURATION_MS, value=4, labels={"tool": "t"}),
            MetricSample(
                key=MetricKey.TOOL_INVOCATION_DURATION_MS, value=1e9, labels={"tool": "t"}
            ),
            MetricSample(key=MetricKey.CONTEXT_TOKENS_USED, value=100),
            MetricSample(key=MetricKey.CONTEXT_TOKENS_USED, value=70),
        ],
    )
    tool = "tool.invocation_duration_ms"
    # Histograms as one fine sketch bucket per value, each carrying its classic bucket;
    # sums as exact integers (whole units; no billionths here).
    assert deltas.increments == {
        ("tool.error_rate", "tool=t,outcome=ok|count"): 2,
        (tool, "tool=t|count"): 3,
        (tool, "tool=t|d=p29/5.0"): 1,
        (tool, "tool=t|d=p37/5.0"): 1,
        (tool, "tool=t|d=p546/+Inf"): 1,
        ("context.tokens_used", "|count"): 2,
    }
    assert deltas.float_increments == {
        ("tool.error_rate", "tool=t,outcome=ok|sum.whole"): 2,
        (tool, "tool=t|sum.whole"): 1_000_000_007,
    }
    assert all(type(amount) is int for amount in deltas.float_increments.values())
    assert deltas.values == {("context.tokens_used", "|value"): 70}
    assert deltas.metric_keys() == ["tool.error_rate", tool, "context.tokens_used"]


def test_empty_batch_has_no_deltas() -> None:
    deltas = aggregate([], [])
    assert len(deltas) == 0
    assert deltas.metric_keys() == []
    assert deltas.plan_ids() == []


def test_billionths_of_a_batch_carry_into_whole_units() -> None:
    samples = [
        MetricSample(key=MetricKey.TOOL_INVOCATION_DURATION_MS, value=v, labels={"tool": "t"})
        for v in (0.75, 0.5, 2.25, 0.000000001)
    ]
    deltas = aggregate([], samples)
    tool = "tool.invocation_duration_ms"
    assert deltas.float_increments == {
        (tool, "tool=t|sum.whole"): 3,
        (tool, "tool=t|sum.nanos"): 500_000_001,
    }


def test_the_latency_buckets_are_named_as_every_histogram_names_its_own() -> None:
    # Zero, values on classic bounds and on log-bucket edges, the smallest and the
    # largest latency: each lands in the fine bucket fine_stat gives its value.
    edges = [GAMMA**i for i in (-3, 0, 1, 200, 300)]
    values = [0.0, 1e-12, 10.0, 20.48, 81920.0, 81920.5, 86_400_000.0, *edges]
    deltas = aggregate([llm_trace(latency_ms=value) for value in values], [])
    expected: dict[str, int] = {}
    for value in values:
        stat = fine_stat(value, GENAI_DURATION_BUCKETS_MS)
        expected[stat] = expected.get(stat, 0) + 1
    found = {
        field.split("|", 1)[1]: n
        for (key, field), n in deltas.increments.items()
        if key == LATENCY and "|d=" in field
    }
    assert found == expected


def test_a_latency_whose_billionths_round_up_to_a_unit_sums_as_sum_parts_says() -> None:
    values = [0.9999999999, 1.5, 2.0000000004]
    deltas = aggregate([llm_trace(latency_ms=value) for value in values], [])
    whole = sum(sum_parts(value)[0] for value in values)
    nanos = sum(sum_parts(value)[1] for value in values)
    found = {
        field.split("|", 1)[1]: n
        for (key, field), n in deltas.float_increments.items()
        if key == LATENCY
    }
    assert found == {"sum.whole": whole + nanos // 10**9, "sum.nanos": nanos % 10**9}
    assert found == {"sum.whole": 4, "sum.nanos": 500_000_000}
