"""The Grafana dashboard (deploy/grafana/fleettrace.json) and the Prometheus that feeds it
(docker-compose.yml): every panel's PromQL names only metrics a real worker exports,
read from the /metrics of a worker serving a fleet filled through the real pipeline;
and the Compose services, the scrape target and the provisioning fit together."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.dashboard_helpers import fill_plan_tree
from tests.waiting import wait_until
from tests.worker_helpers import ROOT, http_get, migrated, serving_worker

DASHBOARD = ROOT / "deploy" / "grafana" / "fleettrace.json"
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
COMPOSE = ROOT / "docker-compose.yml"

#: PromQL words that are not metric names (aggregation modifiers, operators).
KEYWORDS = frozenset(
    [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "and",
        "or",
        "unless",
    ]
)
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'")
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPINGS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_WORD = re.compile(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: its identifiers that are not
    functions, keywords or label names (matchers, ranges, by/on lists removed first)."""
    text = _STRINGS.sub(" ", expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPINGS.sub(" ", text)
    return {word for word, call in _WORD.findall(text) if not call and word.lower() not in KEYWORDS}


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in board["panels"]:
        found.append(panel)
        found += panel.get("panels", [])
    return found


def expressions(board: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in panels(board) for target in panel.get("targets", [])]


@pytest.fixture(scope="module")
def board() -> dict[str, Any]:
    document = json.loads(DASHBOARD.read_text())
    assert isinstance(document, dict)
    return document


def test_the_name_reader_finds_metrics_and_nothing_else() -> None:
    expr = (
        'histogram_quantile(0.95, max by (le, tool) (rate(a_bucket{outcome="x",y=~"z"}[5m])))'
        " / on (tool) group_left sum without (instance) (b_total offset 1h) > bool 0"
    )
    assert metric_names(expr) == {"a_bucket", "b_total"}


def test_every_panel_queries_only_metrics_a_worker_exports(
    board, redis_url, keys, database_url
) -> None:
    db = migrated(database_url)
    fill_plan_tree(redis_url, keys, db)
    with serving_worker(redis_url, db, keys) as (_, base):
        wait_until(lambda: http_get(f"{base}/readyz")[0] == 200, 30, "ready")
        status, text = http_get(f"{base}/metrics")
    assert status == 200
    exported = {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }
    used: set[str] = set()
    for expr in expressions(board):
        names = metric_names(expr)
        assert names, expr  # a query that names no metric checks nothing
        assert names <= exported, (expr, sorted(names - exported))
        used |= names
    # The dashboard covers the worker, its groups and the fleet's live figures.
    assert {
        "fleettrace_worker_records_total",
        "fleettrace_worker_lag",
        "fleettrace_actor_token_usage_total",
        "fleettrace_tool_invocation_duration_ms_bucket",
    } <= used
    # A misspelt metric would be caught.
    assert not metric_names("rate(fleettrace_worker_record_total[5m])") <= exported


def test_panels_use_the_provisioned_prometheus_and_fit_the_grid(board) -> None:
    [source] = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert (source["type"], source["url"]) == ("prometheus", "http://prometheus:9090")
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids))
    for panel in panels(board):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": source["uid"]}
        assert panel["targets"], panel["title"]
        assert all(t["datasource"]["uid"] == source["uid"] for t in panel["targets"])


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts."""
    found = {}
    for volume in service.get("volumes", []):
        host, _, rest = volume.partition(":")
        if host.startswith("./"):
            found[rest.split(":")[0]] = ROOT / host
    return found


def test_compose_runs_prometheus_on_the_worker_and_grafana_on_prometheus() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    worker_command = " ".join(services["worker"]["command"])
    port = re.search(r"--http 0\.0\.0\.0:(\d+)", worker_command)
    assert port is not None
    scrape = yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]
    [job] = scrape
    assert job["metrics_path"] == "/metrics"
    [dns] = job["dns_sd_configs"]
    assert (dns["names"], dns["port"]) == (["worker"], int(port.group(1)))

    prometheus, grafana = services["prometheus"], services["grafana"]
    assert _mounts(prometheus)["/etc/prometheus/prometheus.yml"] == PROMETHEUS
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    mounts = _mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == PROVISIONING
    [provider] = yaml.safe_load((PROVISIONING / "dashboards" / "fleettrace.yml").read_text())[
        "providers"
    ]
    dashboards = provider["options"]["path"]
    assert mounts[f"{dashboards}/fleettrace.json"] == DASHBOARD
    assert grafana["depends_on"]["prometheus"]["condition"] == "service_healthy"
    assert prometheus["depends_on"]["worker"]["condition"] == "service_healthy"
    for service in (prometheus, grafana):
        assert all(p.startswith("127.0.0.1:") for p in service["ports"])
        assert all(path.exists() for path in _mounts(service).values())
