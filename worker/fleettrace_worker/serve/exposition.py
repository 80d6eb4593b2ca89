"""The fleet's live series as Prometheus text, written directly.

With 1,000 histogram series a scrape holds about 19,000 samples; building them as
``prometheus_client`` metric families and letting its exposition validate and format
every label of every sample cost about 80 % of a scrape (1.3 s under load). The text
here is the same, byte for byte (tests/test_exposition.py compares the two on every
kind of series): the same HELP and TYPE lines, label names sorted with ``le`` among
them, label values escaped as ``prometheus_client`` escapes them, and numbers as its
``floatToGoString`` writes them. What it saves: each series' label text is made once
and kept (:class:`LiveExposition` holds it between scrapes, bounded), each bucket line
is three pieces joined, and the cumulative counts, which repeat across series, are
formatted once per value.

:func:`live_families` is the former way, kept as the reference the tests and
benchmarks/producers.py compare against.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from prometheus_client import utils as _prometheus_utils
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.openmetrics.exposition import escape_label_name, escape_metric_name

from fleettrace.live import LiveSeries
from fleettrace.metrics import MetricKey, MetricType

METRIC_PREFIX: Final = "fleettrace_"
_INF: Final = float("inf")
#: Series whose label text is kept between scrapes; past it the cache starts over
#: (plans come and go, so their series must not accumulate).
PREFIX_CACHE_MAX: Final = 50_000
#: A number as Prometheus text writes it (``prometheus_client``'s own formatting).
go_string: Callable[[float], str] = _prometheus_utils.floatToGoString
_TYPES: Final = {
    MetricType.HISTOGRAM: "histogram",
    MetricType.GAUGE: "gauge",
    MetricType.COUNTER: "counter",
}


def metric_name(key: MetricKey) -> str:
    """``tool.invocation_duration_ms`` -> ``fleettrace_tool_invocation_duration_ms``."""
    return METRIC_PREFIX + key.value.replace(".", "_")


def bound_text(value: float) -> str:
    """A bucket's ``le`` value."""
    return "+Inf" if value == _INF else repr(float(value))


def _escape_value(value: str) -> str:
    """A label value as ``prometheus_client`` writes it (UTF-8 allowed)."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _label_text(pairs: Iterable[tuple[str, str]]) -> str:
    return ",".join(f'{escape_label_name(name)}="{_escape_value(value)}"' for name, value in pairs)


class _Family:
    """What one metric key's lines share: the header, and where ``le`` sorts."""

    def __init__(self, key: MetricKey) -> None:
        spec = key.spec
        self.name = escape_metric_name(metric_name(key))
        self.type = spec.type
        self.labels: Sequence[str] = spec.labels
        shown = self.name + "_total" if spec.type is MetricType.COUNTER else self.name
        doc = spec.description.replace("\\", r"\\").replace("\n", r"\n")
        self.header = f"# HELP {shown} {doc}\n# TYPE {shown} {_TYPES[spec.type]}\n"
        #: Label names sorted as the samples' labels are; ``le`` placed among them.
        self.before_le = sum(1 for name in sorted(spec.labels) if name < "le")


class LiveExposition:
    """Renders live series to Prometheus text; keeps each series' label text."""

    def __init__(self) -> None:
        self._families: dict[MetricKey, _Family] = {}
        self._prefixes: dict[tuple[MetricKey, tuple[tuple[str, str], ...]], tuple[str, ...]] = {}
        self._go: dict[float, str] = {}
        self._bounds: dict[float, str] = {}
        self._lock = threading.Lock()

    def render(self, series: Iterable[LiveSeries]) -> str:
        """The text of every family that has a series, in the order of their first
        series, each family's samples in the order of its series."""
        lines: dict[MetricKey, list[str]] = {}
        for one in series:
            key = one.key
            out = lines.get(key)
            if out is None:
                out = lines[key] = [self._family(key).header]
            prefix = self._prefixes.get((key, one.labels))
            if prefix is None:
                prefix = self._prefix(key, one.labels)
            family = self._families[key]
            if family.type is MetricType.HISTOGRAM:
                self._histogram(out, prefix, one)
            elif family.type is MetricType.GAUGE:
                out.append(f"{prefix[0]}{go_string(float(one.value or 0.0))}\n")
            else:
                out.append(f"{prefix[0]}{go_string(float(one.sum))}\n")
        return "".join(["".join(out) for out in lines.values()])

    def _histogram(self, out: list[str], prefix: tuple[str, ...], one: LiveSeries) -> None:
        pre, post, count_prefix, sum_prefix = prefix
        go = self._go
        texts = self._bounds
        cumulative = 0.0
        first = _INF
        for bound, count in one.buckets:
            if bound == _INF:
                continue
            if first == _INF:
                first = bound
            cumulative += count
            value = go.get(cumulative)
            if value is None:  # never -0.0: it starts at 0.0 and adds whole counts
                value = go.setdefault(cumulative, go_string(cumulative))
            text = texts.get(bound) if bound else bound_text(bound)  # 0.0 is not -0.0
            if text is None:
                text = texts.setdefault(bound, bound_text(bound))
            out.append(f"{pre}{text}{post}{value}\n")
        total = go_string(float(one.count))
        out.append(f"{pre}+Inf{post}{total}\n")
        # prometheus_client leaves out count and sum when the first bound is negative.
        if first >= 0:
            out.append(f"{count_prefix}{total}\n")
            out.append(f"{sum_prefix}{go_string(float(one.sum))}\n")

    def _family(self, key: MetricKey) -> _Family:
        family = self._families.get(key)
        if family is None:
            family = self._families.setdefault(key, _Family(key))
        return family

    def _prefix(self, key: MetricKey, labels: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
        """The text before each sample's value: for a histogram, the bucket line's
        parts around the ``le`` value and the count and sum lines' starts."""
        family = self._family(key)
        given = dict(labels)
        pairs = sorted((name, given.get(name, "")) for name in family.labels)
        plain = _label_text(pairs)
        braces = f"{{{plain}}}" if plain else ""
        name = family.name
        if family.type is MetricType.HISTOGRAM:
            head = _label_text(pairs[: family.before_le])
            tail = _label_text(pairs[family.before_le :])
            pre = f'{name}_bucket{{{head}{"," if head else ""}le="'
            post = f'"{"," if tail else ""}{tail}}} '
            prefix: tuple[str, ...] = (pre, post, f"{name}_count{braces} ", f"{name}_sum{braces} ")
        elif family.type is MetricType.GAUGE:
            prefix = (f"{name}{braces} ",)
        else:
            prefix = (f"{name}_total{braces} ",)
        with self._lock:
            if len(self._prefixes) >= PREFIX_CACHE_MAX:
                self._prefixes.clear()
            if len(self._go) >= PREFIX_CACHE_MAX:
                self._go.clear()
            self._prefixes[(key, labels)] = prefix
        return prefix


def live_families(series: Iterable[LiveSeries]) -> list[Metric]:
    """The same series as ``prometheus_client`` metric families (the former renderer:
    the reference for tests and the benchmark's comparator)."""
    families: dict[MetricKey, Metric] = {}
    for one in series:
        key = one.key
        spec = key.spec
        family = families.get(key)
        if family is None:
            family = _metric(key, spec.type, spec.labels, spec.description)
            families[key] = family
        labels = dict(one.labels)
        values = [labels.get(name, "") for name in spec.labels]
        if spec.type is MetricType.HISTOGRAM:
            cumulative, buckets = 0.0, []
            for bound, count in one.buckets:
                if bound != _INF:
                    cumulative += count
                    buckets.append((bound_text(bound), cumulative))
            # Prometheus wants the +Inf bucket to equal the count, always present.
            buckets.append(("+Inf", float(one.count)))
            family.add_metric(values, buckets, float(one.sum))  # type: ignore[attr-defined]
        elif spec.type is MetricType.GAUGE:
            family.add_metric(values, float(one.value or 0.0))  # type: ignore[attr-defined]
        else:
            family.add_metric(values, float(one.sum))  # type: ignore[attr-defined]
    return list(families.values())


def _metric(key: MetricKey, kind: MetricType, labels: Sequence[str], doc: str) -> Metric:
    name = metric_name(key)
    if kind is MetricType.HISTOGRAM:
        return HistogramMetricFamily(name, doc, labels=list(labels))
    if kind is MetricType.GAUGE:
        return GaugeMetricFamily(name, doc, labels=list(labels))
    return CounterMetricFamily(name, doc, labels=list(labels))
