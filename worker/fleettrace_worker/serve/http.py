"""The worker's HTTP endpoint: ``/healthz``, ``/readyz`` and ``/metrics`` (and, with
``--dashboard``, the dashboard: :mod:`fleettrace_worker.serve.dashboard`), on the one ASGI
stack of :mod:`fleettrace_worker.serve.webserver` (Starlette on uvicorn).

``/healthz`` answers 200 while the process serves at all; ``/readyz`` answers 503
while a group loop cannot reach Redis or PostgreSQL, holds work without finishing a
batch for longer than its progress limit, or met entries it needs an upgrade to
read (the body says which), 200 otherwise. ``/metrics`` is Prometheus text made at
scrape time by one collector: the worker's own figures (records, batches, batch
latency, dead letters, retries; per group and stream the pending entries, the lag,
the age of the oldest entry still needed, the idle time and whether the group is
behind its limits) and the fleet's live metrics (``read_live``: the worker's snapshot
while it is current, :mod:`fleettrace.aggregates`), one metric family per metric key
(``tool.invocation_duration_ms`` becomes ``fleettrace_tool_invocation_duration_ms``),
written as text directly (:mod:`fleettrace_worker.serve.exposition`).

Series labelled with a plan are left out by default: a plan is a short-lived,
unbounded label value, and 50,000 plans made every scrape 2.5 MB with 50,000 series.
``plans=N`` (``fleettrace worker --metrics-plans N``, at most ``METRICS_PLANS_MAX``)
exports the N plans with the highest cost, found by a SCAN over every plan hash at
each scrape. A scraper that sends ``Accept-Encoding: gzip`` gets the text gzipped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Final, Protocol

import redis
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from fleettrace.errors import ConfigurationError, FleettraceError
from fleettrace.keys import Keys
from fleettrace.live import LiveSeries, read_live
from fleettrace.plans import top_plans
from fleettrace_worker.keys import METRICS_PLANS_MAX
from fleettrace_worker.serve.dashboard.access import check_exposure
from fleettrace_worker.serve.dashboard.app import DashboardSettings, build_app
from fleettrace_worker.serve.exposition import METRIC_PREFIX, LiveExposition, metric_name
from fleettrace_worker.serve.webserver import HttpServer, parse_address
from fleettrace_worker.stream.groups import GroupLimits, inspect_groups, loop_streams
from fleettrace_worker.stream.loop import BATCH_LATENCY_BUCKETS_S, GroupLoop

__all__ = ["METRIC_PREFIX", "WorkerCollector", "metric_name", "parse_address", "serve"]

log = logging.getLogger(__name__)

_INF: Final = float("inf")


class WorkerStatus(Protocol):
    """What the endpoint needs to know about the worker it serves."""

    keys: Keys
    group_limits: GroupLimits

    @property
    def loops(self) -> list[GroupLoop[object]]: ...

    def ready(self) -> bool: ...


def _bound(value: float) -> str:
    return "+Inf" if value == _INF else repr(float(value))


class WorkerCollector(Collector):
    """Builds every metric family at scrape time; nothing is cached between scrapes."""

    def __init__(self, worker: WorkerStatus, client: redis.Redis, plans: int = 0) -> None:
        if not 0 <= plans <= METRICS_PLANS_MAX:
            raise ConfigurationError(f"--metrics-plans must be 0-{METRICS_PLANS_MAX}, got {plans}")
        self.worker = worker
        self.client = client
        self.plans = plans
        self._plans_error = ""
        self._exposition = LiveExposition()

    def collect(self) -> Iterator[Metric]:
        """The worker's own families and the groups' (:meth:`exposition` adds the
        live series' text after them)."""
        yield from self._own()
        try:
            yield from self._groups()
        except (FleettraceError, redis.RedisError) as error:
            log.debug("group figures left out of this scrape: %s", error)

    def _own(self) -> Iterator[Metric]:
        loops = self.worker.loops
        ready = GaugeMetricFamily(
            "fleettrace_worker_ready", "1 when every group loop reaches its servers."
        )
        ready.add_metric([], 1.0 if self.worker.ready() else 0.0)
        yield ready
        counters = (
            ("records", "Records handled (stored or forwarded), by group."),
            ("batches", "Batches handled, by group."),
            ("dead_letters", "Records and entries sent to the dead-letter stream, by group."),
            ("retries", "Attempts that met an unavailable server, by group."),
        )
        for name, doc in counters:
            family = CounterMetricFamily(f"fleettrace_worker_{name}", doc, labels=["group"])
            for loop in loops:
                family.add_metric([loop.group], float(getattr(loop.stats, name)))
            yield family
        since = GaugeMetricFamily(
            "fleettrace_worker_seconds_since_progress",
            "Seconds since the group last finished a batch or found nothing to do.",
            labels=["group"],
        )
        upgrade = GaugeMetricFamily(
            "fleettrace_worker_upgrade_needed",
            "1 once the group met entries of a newer stream format than it reads.",
            labels=["group"],
        )
        for loop in loops:
            since.add_metric([loop.group], loop.stats.seconds_since_progress())
            upgrade.add_metric([loop.group], 0.0 if loop.stats.upgrade_needed is None else 1.0)
        yield since
        yield upgrade
        latency = HistogramMetricFamily(
            "fleettrace_worker_batch_latency_seconds",
            "Time from a batch read to its acknowledgement, by group.",
            labels=["group"],
        )
        for loop in loops:
            stats = loop.stats
            with stats.lock:
                counts = list(stats.latency_buckets)
                total, latency_sum = stats.latency_count, stats.latency_sum_s
            cumulative, buckets = 0, []
            for bound, count in zip(BATCH_LATENCY_BUCKETS_S, counts, strict=True):
                cumulative += count
                buckets.append((_bound(bound), float(cumulative)))
            buckets.append(("+Inf", float(total)))
            latency.add_metric([loop.group], buckets, latency_sum)
        yield latency

    def _top_plans(self) -> list[LiveSeries]:
        """The series of the costliest plans; none (and one warning per distinct error)
        when they cannot be read, so the fleet's families are still exported."""
        try:
            top = top_plans(self.client, self.worker.keys, self.plans)
        except (FleettraceError, redis.RedisError) as error:
            if str(error) != self._plans_error:
                self._plans_error = str(error)
                log.warning("plans left out of /metrics: %s", error)
            return []
        self._plans_error = ""
        return [series for plan in top.plans for series in plan.series]

    def _groups(self) -> Iterator[Metric]:
        labels = ["group", "stream"]
        pending = GaugeMetricFamily(
            "fleettrace_worker_pending",
            "Entries delivered to a group and not yet acknowledged.",
            labels=labels,
        )
        lag = GaugeMetricFamily(
            "fleettrace_worker_lag",
            "Entries of a stream not yet delivered to a group.",
            labels=labels,
        )
        age = GaugeMetricFamily(
            "fleettrace_worker_group_age_seconds",
            "Age of the oldest entry a group still needs (0 when it has everything).",
            labels=labels,
        )
        idle = GaugeMetricFamily(
            "fleettrace_worker_group_idle_seconds",
            "Seconds since any consumer of a group last read or acknowledged.",
            labels=labels,
        )
        behind = GaugeMetricFamily(
            "fleettrace_worker_group_behind",
            "1 when a group is past its lag or age limit: it holds the stream's trim floor.",
            labels=labels,
        )
        limits = self.worker.group_limits
        streams = loop_streams(self.worker.loops)
        for report in inspect_groups(self.client, self.worker.keys, streams=streams):
            values = [report.group, report.stream]
            pending.add_metric(values, float(report.pending))
            if report.lag is not None:
                lag.add_metric(values, float(report.lag))
            age.add_metric(values, report.age_s)
            if report.idle_s is not None:
                idle.add_metric(values, report.idle_s)
            behind.add_metric(values, 1.0 if report.behind(limits) else 0.0)
        yield from (pending, lag, age, idle, behind)

    def exposition(self) -> bytes:
        """The whole /metrics text: the worker's own families and the groups' through
        ``prometheus_client``, then the fleet's live series, written directly
        (:mod:`fleettrace_worker.serve.exposition`). When Redis cannot be read, the
        worker's own families only (one failed attempt, not one per part)."""
        families = list(self._own())
        live = ""
        try:
            families += self._groups()
            everything: list[LiveSeries] = read_live(self.client, self.worker.keys)
            if self.plans:
                everything += self._top_plans()
            live = self._exposition.render(everything)
        except (FleettraceError, redis.RedisError) as error:
            log.debug("Redis figures left out of this scrape: %s", error)
        return generate_latest(_Families(families)) + live.encode()


class _Families(Collector):
    """Families already made, as ``generate_latest`` reads them."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def _readyz(worker: WorkerStatus) -> tuple[int, str]:
    if worker.ready():
        return 200, "ready\n"
    reasons = [loop.stats.not_ready_reason() for loop in worker.loops]
    reason = "; ".join(r for r in reasons if r) or "starting or stopping"
    return 503, f"not ready: {reason}\n"


def probe_routes(worker: WorkerStatus, collector: WorkerCollector) -> list[BaseRoute]:
    """``/healthz``, ``/readyz`` and ``/metrics``: open to scrapers and probes always."""

    def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    def readyz(request: Request) -> Response:
        status, body = _readyz(worker)
        return PlainTextResponse(body, status_code=status)

    def metrics(request: Request) -> Response:
        return Response(collector.exposition(), media_type=CONTENT_TYPE_LATEST)

    return [
        Route("/healthz", healthz, include_in_schema=False),
        Route("/readyz", readyz, include_in_schema=False),
        Route("/metrics", metrics, include_in_schema=False),
    ]


def serve(
    address: str,
    worker: WorkerStatus,
    client: redis.Redis,
    *,
    plans: int = 0,
    dashboard: DashboardSettings | None = None,
) -> HttpServer:
    """Start serving in a daemon thread; ``shutdown()`` the result to stop. ``plans``:
    how many plans (the costliest) /metrics exports with a ``plan`` label;
    ``dashboard``: also serve the dashboard's pages and /api/ (docs/dashboard.md)."""
    collector = WorkerCollector(worker, client, plans)
    host, port = parse_address(address)
    if dashboard is not None:
        check_exposure(host, dashboard.token)
    app = build_app(probe_routes(worker, collector), dashboard)
    return HttpServer(app, host, port)
