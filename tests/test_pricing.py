"""Pricing: the compiled per-model price equals genai-prices' own ``calc_price`` on every
case named here (cached, reasoning, audio, tiered, time-dependent prices); the price
file prices what genai-prices does not know and overrides what it does; the emitter
prices on its sender thread, never on the caller's."""

from __future__ import annotations

import json
import random
import threading
import tomllib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from genai_prices import Usage, calc_price, data_snapshot
from genai_prices.types import ModelPrice, Tier, TieredPrices
from pydantic import ValidationError

from fleettrace import ConfigurationError, LLMTrace
from fleettrace.keys import Keys
from fleettrace.price_overrides import PRICES_ENV, load_prices
from fleettrace.pricing import MAX_CACHED, USAGE_KEYS, Pricer, price_trace, with_cost
from tests.emitting import make_emitter, stream_records

AT = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _reference(trace: LLMTrace) -> float | None:
    """genai-prices' own answer for the same call."""
    values = trace.__dict__
    usage = {key: values[name] for name, key in USAGE_KEYS.items() if values[name] is not None}
    try:
        calculation = calc_price(
            Usage(**usage),
            model_ref=trace.model,
            provider_id=trace.provider,
            genai_request_timestamp=trace.started_at,
        )
    except (LookupError, ValueError):
        return None
    return float(calculation.total_price)


def _call(provider: str, model: str, **fields: Any) -> LLMTrace:
    fields.setdefault("started_at", AT)
    return LLMTrace(provider=provider, model=model, **fields)


def test_claude_with_cache_reads_costs_what_genai_prices_says_not_the_uncached_price() -> None:
    trace = _call(
        "anthropic",
        "claude-3-5-sonnet-latest",
        prompt_tokens=10_000,
        cache_read_tokens=9_000,
        completion_tokens=100,
    )
    assert Pricer().price(trace) == pytest.approx(0.0072, abs=1e-12)
    assert Pricer().price(trace) == _reference(trace)
    uncached = trace.model_copy(update={"cache_read_tokens": None})
    assert Pricer().price(uncached) == pytest.approx(0.0315, abs=1e-12)


NAMED_CASES = [
    # (provider, model, fields): cached reads and writes, reasoning, audio, tiers.
    ("openai", "gpt-4o", {"prompt_tokens": 1000, "completion_tokens": 500}),
    (
        "openai",
        "gpt-4o",
        {"prompt_tokens": 5000, "completion_tokens": 10, "cache_read_tokens": 4096},
    ),
    (
        "anthropic",
        "claude-3-5-sonnet-latest",
        {"prompt_tokens": 20_000, "completion_tokens": 700, "cache_write_tokens": 15_000},
    ),
    (
        "anthropic",
        "claude-3-5-sonnet-latest",
        {
            "prompt_tokens": 20_000,
            "completion_tokens": 700,
            "cache_write_tokens": 5_000,
            "cache_read_tokens": 14_000,
        },
    ),
    ("openai", "o3", {"prompt_tokens": 2000, "completion_tokens": 3000, "reasoning_tokens": 2500}),
    (
        "openai",
        "gpt-4o-audio-preview",
        {
            "prompt_tokens": 3000,
            "completion_tokens": 900,
            "audio_input_tokens": 2000,
            "audio_output_tokens": 800,
        },
    ),
    # A price the compiled form leaves to the library (cached audio reads).
    (
        "openai",
        "gpt-4o-realtime-preview",
        {
            "prompt_tokens": 3000,
            "completion_tokens": 900,
            "cache_read_tokens": 1000,
            "audio_input_tokens": 2000,
        },
    ),
    # Tiered: above 128k input tokens every token pays the higher price.
    ("google", "gemini-1.5-pro", {"prompt_tokens": 128_000, "completion_tokens": 1000}),
    ("google", "gemini-1.5-pro", {"prompt_tokens": 128_001, "completion_tokens": 1000}),
    ("google", "gemini-1.5-pro", {"prompt_tokens": 300_000, "completion_tokens": 9_000}),
    (
        "openai",
        "gpt-5.4",
        {"prompt_tokens": 400_000, "completion_tokens": 10, "cache_read_tokens": 1},
    ),
    # Off-peak prices change within a day: priced by the call's own time.
    ("deepseek", "deepseek-chat", {"prompt_tokens": 9000, "completion_tokens": 900}),
    # Zero tokens, and a model genai-prices does not know.
    ("openai", "gpt-4o", {"prompt_tokens": 0, "completion_tokens": 0}),
    ("acme", "acme-unreleased-9", {"prompt_tokens": 1000, "completion_tokens": 10}),
]


@pytest.mark.parametrize(("provider", "model", "fields"), NAMED_CASES)
def test_named_cases_equal_calc_price(provider: str, model: str, fields: dict[str, int]) -> None:
    pricer = Pricer()
    for hour in (0, 3, 12, 17, 23):  # the same model through the day and across days
        for day in (0, 1, 400):
            at = AT.replace(hour=hour) + timedelta(days=day)
            trace = _call(provider, model, started_at=at, **fields)
            assert pricer.price(trace) == _reference(trace), (at, trace)


def test_tiered_prices_cross_their_threshold() -> None:
    below = _call("google", "gemini-1.5-pro", prompt_tokens=128_000, completion_tokens=0)
    above = _call("google", "gemini-1.5-pro", prompt_tokens=128_001, completion_tokens=0)
    below_cost, above_cost = Pricer().price(below), Pricer().price(above)
    assert below_cost is not None and above_cost is not None
    assert above_cost > below_cost * 1.5  # every token pays the tier's price
    assert (below_cost, above_cost) == (_reference(below), _reference(above))


def test_varied_calls_equal_calc_price() -> None:
    rng = random.Random(12)
    models = [case[:2] for case in NAMED_CASES]
    pricer = Pricer()
    for _ in range(400):
        provider, model = rng.choice(models)
        prompt = rng.choice([0, 1, 999, 128_000, 128_001, 200_001, rng.randint(0, 500_000)])
        completion = rng.randint(0, 20_000)
        fields: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion}
        if rng.random() < 0.5:
            fields["cache_read_tokens"] = rng.randint(0, prompt // 2)
        if rng.random() < 0.3:
            fields["cache_write_tokens"] = rng.randint(0, prompt // 2)
        if rng.random() < 0.3:
            fields["reasoning_tokens"] = rng.randint(0, completion)
        if rng.random() < 0.2:
            fields["audio_input_tokens"] = rng.randint(0, prompt)
        if rng.random() < 0.2:
            fields["audio_output_tokens"] = rng.randint(0, completion)
        at = AT + timedelta(minutes=rng.randint(0, 60 * 24 * 900))
        trace = _call(provider, model, started_at=at, **fields)
        assert pricer.price(trace) == _reference(trace), trace


def test_unknown_tokens_and_unknown_models_are_unpriced_never_zero() -> None:
    pricer = Pricer()
    assert pricer.price(_call("openai", "gpt-4o", prompt_tokens=None)) is None
    assert pricer.price(_call("openai", "gpt-4o", completion_tokens=None)) is None
    assert pricer.price(_call("acme", "nobody-knows", prompt_tokens=10)) is None
    assert pricer.price(_call("no-such-provider", "gpt-4o", prompt_tokens=10)) is None


PRICES_TOML = """
[[prices]]
provider = "self-hosted"
model = "Llama-3.1-70B-support-ft"
input_mtok = 0.60
output_mtok = 0.80
cache_read_mtok = "0.06"

[[prices]]
provider = "openai"
model = "gpt-4o"
input_mtok = 1
output_mtok = 2

[[prices]]
provider = "acme"
model = "long-context"
input_mtok = { base = 1.25, tiers = [{ start = 128000, price = 2.5 }] }
output_mtok = 5
"""


def _library_price(price: ModelPrice, trace: LLMTrace) -> float:
    """genai-prices' own per-price calculation of the same usage."""
    values = trace.__dict__
    usage = {key: values[name] for name, key in USAGE_KEYS.items() if values[name] is not None}
    return float(price.calc_price(Usage(**usage))["total_price"])


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_price_file_prices_custom_models_and_overrides_listed_ones(
    tmp_path: Path, suffix: str
) -> None:
    path = tmp_path / f"prices{suffix}"
    if suffix == ".toml":
        path.write_text(PRICES_TOML)
    else:
        path.write_text(json.dumps(tomllib.loads(PRICES_TOML)))
    prices = load_prices(path)
    assert prices[("openai", "gpt-4o")] == ModelPrice(input_mtok=Decimal(1), output_mtok=Decimal(2))
    assert prices[("acme", "long-context")] == ModelPrice(
        input_mtok=TieredPrices(Decimal("1.25"), [Tier(128_000, Decimal("2.5"))]),
        output_mtok=Decimal(5),
    )
    pricer = Pricer(prices)
    custom = _call(
        "self-hosted",
        "llama-3.1-70b-support-ft",  # matched without regard to case
        prompt_tokens=10_000,
        cache_read_tokens=4_000,
        completion_tokens=1_000,
    )
    expected = _library_price(prices[("self-hosted", "llama-3.1-70b-support-ft")], custom)
    assert pricer.price(custom) == expected == pytest.approx(0.00464, abs=1e-12)
    listed = _call("openai", "gpt-4o", prompt_tokens=1_000_000, completion_tokens=1_000_000)
    assert pricer.price(listed) == 3.0  # not genai-prices' 12.5
    assert Pricer().price(listed) == _reference(listed) == 12.5
    for prompt in (128_000, 128_001):
        tiered = _call("acme", "long-context", prompt_tokens=prompt, completion_tokens=10)
        assert pricer.price(tiered) == _library_price(prices[("acme", "long-context")], tiered)
    other = _call("anthropic", "claude-3-5-sonnet-latest", prompt_tokens=10, completion_tokens=1)
    assert pricer.price(other) == _reference(other)  # what the file does not list


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("prices = 3", "expected a list named 'prices'"),
        ("[[prices]]\nmodel = 'm'\ninput_mtok = 1", "entry 1: 'provider' must be a non-empty"),
        ("[[prices]]\nprovider = 'p'\nmodel = 'm'", "entry 1: no price given"),
        ("[[prices]]\nprovider = 'p'\nmodel = 'm'\ninput_mtk = 1", "unknown price key 'input_mtk'"),
        ("[[prices]]\nprovider = 'p'\nmodel = 'm'\ninput_mtok = -1", "must be a finite number"),
        ("[[prices]]\nprovider = 'p'\nmodel = 'm'\ninput_mtok = 'x'", "expected a number of USD"),
        ("[[prices]]\nprovider = 'p'\nmodel = 'm'\ninput_mtok = nan", "must be a finite number"),
        (
            "[[prices]]\nprovider = 'p'\nmodel = 'm'\ninput_mtok = { base = 1 }",
            "a tiered price is",
        ),
        (
            "[[prices]]\nprovider='p'\nmodel='m'\ninput_mtok=1\n"
            "[[prices]]\nprovider='P'\nmodel='M'\ninput_mtok=2",
            "entry 2: p/m is listed twice",
        ),
        ("[[prices]\n", "not valid TOML"),
    ],
)
def test_a_bad_price_file_is_refused_in_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match=message) as caught:
        load_prices(path)
    assert "\n" not in str(caught.value)
    assert str(path) in str(caught.value)


def test_a_missing_price_file_is_refused_when_the_emitter_is_made(
    redis_url: str, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PRICES_ENV, str(tmp_path / "absent.toml"))
    with pytest.raises(ConfigurationError, match=r"absent\.toml: cannot read it"):
        make_emitter(redis_url, keys)


def test_the_emitter_prices_on_its_sender_thread_with_the_price_file(
    redis_url: str,
    keys: Keys,
    redis_client: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(PRICES_TOML)
    monkeypatch.setenv(PRICES_ENV, str(path))
    emitter = make_emitter(redis_url, keys)
    path.unlink()  # read once, when the emitter was made
    pricing_threads: list[str] = []
    price = emitter.pricer.price

    def spy(trace: LLMTrace) -> float | None:
        pricing_threads.append(threading.current_thread().name)
        return price(trace)

    monkeypatch.setattr(emitter.pricer, "price", spy)
    cached = _call(
        "anthropic",
        "claude-3-5-sonnet-latest",
        prompt_tokens=10_000,
        cache_read_tokens=9_000,
        completion_tokens=100,
        plan_id="p",
    )
    custom = _call("self-hosted", "llama-3.1-70b-support-ft", prompt_tokens=10**6, plan_id="p")
    given = _call("openai", "gpt-4o", prompt_tokens=10**6, cost_usd=0.5, plan_id="p")
    unknown = _call("acme", "nobody-knows", prompt_tokens=10, plan_id="p")
    no_usage = _call("openai", "gpt-4o", prompt_tokens=None, completion_tokens=None, plan_id="p")
    sent = [cached, custom, given, unknown, no_usage]
    for record in sent:
        emitter.record(record)
    assert all(r.cost_usd is None for r in sent if r is not given)  # the caller's are untouched
    assert emitter.flush(10)
    got = {r.trace_id: r for r in stream_records(redis_client, keys.traces)}
    assert got[cached.trace_id].cost_usd == pytest.approx(0.0072, abs=1e-12)
    assert got[custom.trace_id].cost_usd == pytest.approx(0.6, abs=1e-12)
    assert got[given.trace_id].cost_usd == 0.5  # a cost the caller set is kept
    assert got[unknown.trace_id].cost_usd is None
    assert got[no_usage.trace_id].cost_usd is None
    assert got[no_usage.trace_id].prompt_tokens is None
    # Priced on the sender thread (the given cost is not priced at all), and the plan's
    # live cost counts the priced calls only.
    assert pricing_threads == ["fleettrace-emitter"] * 4
    plan = redis_client.hgetall(keys.plan("p"))
    assert plan[b"plan.cost_usd||count"] == b"3"
    assert float(plan[b"plan.cost_usd||sum"]) == pytest.approx(0.0072 + 0.6 + 0.5)
    assert emitter.close()


def test_price_trace_prices_now_and_keeps_a_given_cost() -> None:
    trace = _call("openai", "gpt-4o", prompt_tokens=1000, completion_tokens=500)
    assert price_trace(trace) == _reference(trace)
    assert price_trace(trace.model_copy(update={"cost_usd": 9.0})) == 9.0


def test_a_priced_copy_is_what_model_copy_makes() -> None:
    trace = _call("openai", "gpt-4o", prompt_tokens=1000, completion_tokens=500, plan_id="p")
    fast, slow = with_cost(trace, 0.25), trace.model_copy(update={"cost_usd": 0.25})
    assert fast == slow and fast.model_fields_set == slow.model_fields_set
    assert fast.model_dump() == slow.model_dump()
    assert trace.cost_usd is None  # the original is untouched
    with pytest.raises(ValidationError):  # still frozen
        fast.cost_usd = 1.0  # type: ignore[misc]


def test_the_caches_stay_bounded_over_many_models_and_days() -> None:
    pricer = Pricer()
    for i in range(MAX_CACHED * 2 + 10):
        # Made-up model names, and one known model over years of days.
        pricer.price(_call("acme", f"model-{i}", prompt_tokens=1))
        at = AT + timedelta(days=i)
        trace = _call("openai", "gpt-4o", prompt_tokens=i, completion_tokens=1, started_at=at)
        assert pricer.price(trace) == _reference(trace)
    assert len(pricer._models) <= MAX_CACHED
    assert len(pricer._by_day) <= MAX_CACHED
    assert len(pricer._compiled) <= 64  # one per distinct price object


def test_every_model_genai_prices_knows_prices_as_calc_price_does() -> None:
    """Each model of the bundled data, with cached, reasoning and audio tokens and
    across the tier thresholds: the compiled price or the library's fallback, never
    a different number."""
    rng = random.Random(3)
    pricer = Pricer()
    compared = 0
    for provider in data_snapshot.get_snapshot().providers:
        for model in provider.models:
            prompt = rng.choice([0, 1000, 130_000, 250_000])
            completion = rng.randint(0, 5000)
            fields: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion}
            fields["cache_read_tokens"] = rng.randint(0, prompt // 2)
            if rng.random() < 0.5:
                fields["cache_write_tokens"] = rng.randint(0, prompt // 3)
            if rng.random() < 0.5:
                fields["reasoning_tokens"] = rng.randint(0, completion)
            if rng.random() < 0.3:
                fields["audio_input_tokens"] = rng.randint(0, prompt)
                fields["audio_output_tokens"] = rng.randint(0, completion)
            trace = _call(provider.id, model.id, **fields)
            assert pricer.price(trace) == _reference(trace), trace
            compared += 1
    assert compared > 1000
    assert any(not compiled.exact for compiled in pricer._compiled.values())
    assert sum(c.exact for c in pricer._compiled.values()) > 0.9 * len(pricer._compiled)
