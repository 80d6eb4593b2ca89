"""The /metrics renderer writes, byte for byte, what prometheus_client wrote for the
same series (worker/fleettrace_worker/serve/exposition.py), for every kind of series:
histograms with and without labels, extra and negative bounds, large counts, label
values that need escaping, gauges without a value, counters, per-plan families."""

from __future__ import annotations

import math
from collections.abc import Iterator

from prometheus_client import generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from fleettrace.live import LiveSeries
from fleettrace.metrics import MetricKey
from fleettrace.sketch import FineBucket
from fleettrace_worker.serve.exposition import LiveExposition, live_families

INF = math.inf


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def _reference(series: list[LiveSeries]) -> bytes:
    return generate_latest(_Families(live_families(series)))


def _histogram(key: MetricKey, labels: tuple[tuple[str, str], ...], **kw: object) -> LiveSeries:
    bounds = (*key.spec.buckets, INF)
    counts = kw.pop("counts", None) or [i % 3 for i in range(len(bounds))]
    buckets = tuple(zip(bounds, counts, strict=True))  # type: ignore[call-overload]
    total = sum(count for _, count in buckets)
    defaults: dict[str, object] = {"count": total, "sum": 912.25, "buckets": buckets}
    defaults.update(kw)
    return LiveSeries(key=key, labels=labels, **defaults)  # type: ignore[arg-type]


def _series() -> list[LiveSeries]:
    actor = MetricKey.ACTOR_INVOCATION_DURATION_MS
    tokens = MetricKey.ACTOR_TOKEN_USAGE
    return [
        _histogram(actor, (("actor", "planner"),)),
        _histogram(actor, (("actor", 'say "hi"\\ \n ünï'),)),  # escaped, UTF-8 kept
        _histogram(actor, (("actor", ""),), sum=0.0, count=0, counts=[0] * 15),
        _histogram(actor, (), sum=1.5e300),  # a label the series lacks: empty value
        _histogram(  # a bound the key no longer has, and counts past 1e6 (Go's exponent)
            actor,
            (("actor", "old"),),
            buckets=((0.5, 2_000_000), (3.0, 7), (7.5, 1), (INF, 3)),
            count=2_000_011,
            fine=(FineBucket(1, 3, 0.5, 2),),
            p50=0.4,
        ),
        _histogram(actor, (("actor", "neg"),), buckets=((-1.0, 1), (INF, 2)), count=3),
        _histogram(MetricKey.PLAN_DURATION_SECONDS, (("phase", "act"),)),
        LiveSeries(
            tokens, (("model", "gpt-4o"), ("provider", "openai"), ("token_type", "p")), 5, 1e21
        ),
        LiveSeries(tokens, (("provider", "openai"),), 1, 0.1 + 0.2),
        LiveSeries(MetricKey.CONTEXT_TOKENS_USED, (), 1, 0.0, value=None),
        LiveSeries(MetricKey.CONTEXT_TOKENS_USED, (), 1, 0.0, value=-0.0),
        LiveSeries(MetricKey.CONTEXT_TOKENS_USED, (), 1, 0.0, value=123456789.5),
        LiveSeries(MetricKey.TOOL_ERROR_RATE, (("tool", "grep"), ("outcome", "error")), 2, 2.0),
        _histogram(actor, (("actor", "late"),)),  # back to an earlier family
        LiveSeries(MetricKey.PLAN_COST_USD, (("plan", "p,1=x|y"),), 3, 0.015),
    ]


def test_the_text_is_prometheus_clients_byte_for_byte() -> None:
    series = _series()
    exposition = LiveExposition()
    expected = _reference(series)
    assert exposition.render(series).encode() == expected
    # Again from the kept label texts, and with the series in another order.
    assert exposition.render(series).encode() == expected
    assert exposition.render(series[::-1]).encode() == _reference(series[::-1])
    assert b"# TYPE fleettrace_actor_token_usage_total counter" in expected
    assert b'le="+Inf"' in expected and b"2e+06" in expected
    assert LiveExposition().render([]) == ""
