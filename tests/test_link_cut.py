"""A fleet across hosts: one agent host's link cut for 20 s under load.

Four hosts made of network namespaces (:mod:`tests.netns`) on one switch: two agent
hosts running a producer process each (the real emitter), a data host running a
private Redis and a private PostgreSQL, and a worker host running ``fleettrace worker``.
Every address exists only inside the namespaces. Agent host 1's port on the switch goes
down for 20 s while both agents emit, then comes back: its emitter buffers and sends
what it buffered, nothing is dropped (the load stays under the buffer bound), every
record is stored once, and the live counters equal the sums of the rows. Skipped, with
the reason, where network namespaces cannot be made. Figures go to
build/reliability/link_cut.json (docs/reliability.md).
"""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from fleettrace.keys import Keys
from fleettrace.live import plan_cost_usd
from tests import netns
from tests.emitting import emitter_figures
from tests.reliability import report
from tests.servers import PrivatePostgres, PrivateRedis
from tests.waiting import wait_until
from tests.worker_helpers import ROOT, migrated, pending, worker_env

HOSTS = {
    "agent1": "10.77.0.11",
    "agent2": "10.77.0.12",
    "data": "10.77.0.3",
    "workers": "10.77.0.4",
}
AGENTS = ("agent1", "agent2")
#: Per agent: LLM call records and metric observations, spread over SECONDS.
RECORDS = 6_000
SAMPLES = 600
SECONDS = 28
OUTAGE_S = 20
#: The agents' buffer bound: far above what 20 s of this load leaves buffered, so
#: the documented overflow policy (drop the oldest) never applies and nothing may drop.
BUFFER_RECORDS = 20_000
PLANS = [f"plan-{i}" for i in range(7)]  # tests.factories.numbered_trace's plans
NOT_PERMITTED = "mount --make-shared /run/netns failed: Operation not permitted"


class DataHost:
    """The data host's servers, reached from this process by entering its namespace."""

    def __init__(self, network: netns.Network) -> None:
        self.namespace = network.namespace("data")
        # Without a password Redis 7 answers only loopback clients unless told otherwise.
        no_password = ("--protected-mode", "no")
        self.redis = PrivateRedis(
            appendonly=False, host=HOSTS["data"], port=6379, extra_args=no_password
        )
        self.postgres = PrivatePostgres(host=HOSTS["data"], port=5432)
        self.postgres.write_hba(["local all all trust", f"host all all {netns.SUBNET} trust"])

    def start(self) -> None:
        with netns.entered(self.namespace):
            self.redis.start()
            self.postgres.start()
            migrated(self.postgres.url)

    def rows(self, query: str) -> list[tuple[Any, ...]]:
        with netns.entered(self.namespace), psycopg.connect(self.postgres.url) as conn:
            return conn.execute(query).fetchall()

    def count(self, query: str) -> int:
        return int(self.rows(query)[0][0])

    def redis_figures(self, keys: Keys) -> dict[str, Any]:
        """Per agent: its emitter figures in Redis and what its streams hold pending;
        each plan's live cost."""
        with netns.entered(self.namespace):
            client = redis.Redis.from_url(self.redis.url)
            try:
                return {
                    "emitters": {
                        host: emitter_figures(client, keys.for_producer(host)) for host in AGENTS
                    },
                    "pending": sum(pending(client, keys.for_producer(host)) for host in AGENTS),
                    "plan_costs": {plan: plan_cost_usd(client, keys, plan) for plan in PLANS},
                }
            finally:
                client.close()

    def close(self) -> None:
        self.postgres.close()
        self.redis.close()


@pytest.fixture
def network() -> Iterator[netns.Network]:
    reason = netns.unavailable()
    if reason is not None:
        pytest.skip(reason)
    with netns.Network(HOSTS) as made:
        yield made


@pytest.fixture
def data_host(network: netns.Network) -> Iterator[DataHost]:
    host = DataHost(network)
    try:
        host.start()
        yield host
    finally:
        host.close()


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
        process.communicate()


def _producer(
    network: netns.Network, host: str, keys: Keys, url: str, log: Path
) -> subprocess.Popen[str]:
    """Agent ``host``'s producer process; its stderr goes to ``log`` (a pipe nobody
    reads while the link is down could fill and stall it)."""
    first = AGENTS.index(host) * 1_000_000  # distinct decision ids per agent
    env = {
        **worker_env(url, "unused", keys),
        "FLEETTRACE_PRODUCER": host,
        "FLEETTRACE_EMITTER_MAX_BUFFER_RECORDS": str(BUFFER_RECORDS),
        "FLEETTRACE_EMITTER_RETRY_MAX_S": "1",
        "FLEETTRACE_EMITTER_SOCKET_TIMEOUT_S": "2",
    }
    argv = [sys.executable, "-m", "tests.producer", keys.namespace, url]
    argv += [str(first), str(RECORDS), str(SAMPLES), str(SECONDS)]
    with log.open("w") as err:
        return subprocess.Popen(
            network.command(host, argv),
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )


def _emitter_stats(line: str) -> dict[str, int]:
    """``accepted=N sent=N dropped=N`` as printed by tests/producer.py."""
    return {name: int(value) for name, value in (part.split("=") for part in line.split())}


def _by_producer(data: DataHost) -> dict[str, int]:
    rows = data.rows("SELECT producer, count(*) FROM llm_traces GROUP BY producer")
    return {str(producer): int(count) for producer, count in rows}


def _live(network: netns.Network, env: dict[str, str]) -> dict[tuple[str, str], dict[str, Any]]:
    """``fleettrace metrics --json`` run on the worker host, by (key, token_type/tool)."""
    argv = [sys.executable, "-m", "fleettrace_worker.cli", "metrics", "--json"]
    done = subprocess.run(
        network.command("workers", argv),
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    series: dict[tuple[str, str], dict[str, Any]] = {}
    for item in json.loads(done.stdout)["items"]:
        labels = item["labels"]
        series[item["key"], labels.get("token_type") or labels.get("tool", "")] = item
    return series


def test_without_iproute2_or_the_right_to_make_namespaces_the_reason_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert netns.unavailable() == (
        "network namespaces need iproute2's `ip`, which is not installed"
    )
    refusing = tmp_path / "ip"
    refusing.write_text(f"#!/bin/sh\necho '{NOT_PERMITTED}' >&2\nexit 1\n")
    refusing.chmod(0o755)
    reason = netns.unavailable()
    assert reason is not None
    assert reason.startswith(
        "network namespaces are not permitted here (root or CAP_NET_ADMIN): ip netns add ft-probe-"
    )
    assert reason.endswith(f": {NOT_PERMITTED}")


@pytest.mark.slow
def test_an_agent_host_cut_off_for_20_s_buffers_and_loses_nothing(
    network: netns.Network, data_host: DataHost, tmp_path: Path
) -> None:
    keys = Keys(f"netns-{uuid.uuid4().hex[:8]}")
    redis_url, db = data_host.redis.url, data_host.postgres.url
    # The hosts' addresses exist only inside the namespaces: none is the machine's own.
    assert netns.addresses_in(netns.SUBNET) == []
    with netns.entered(data_host.namespace):
        assert netns.addresses_in(netns.SUBNET) == [f"{HOSTS['data']}/{netns.PREFIX_LENGTH}"]
    env = worker_env(redis_url, db, keys)
    worker_argv = [sys.executable, "-m", "fleettrace_worker.cli", "worker"]
    worker_argv += ["--consumer", "w-netns", "--block-ms", "200"]
    worker = subprocess.Popen(
        network.command("workers", worker_argv),
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    logs = {host: tmp_path / f"{host}.log" for host in AGENTS}
    producers = {host: _producer(network, host, keys, redis_url, logs[host]) for host in AGENTS}
    try:
        wait_until(lambda: set(_by_producer(data_host)) == set(AGENTS), 60, "rows from both agents")
        network.cut("agent1")
        cut_at = time.monotonic()
        # What was on its way when the port went down has landed after a moment; from
        # then on nothing of agent1's may arrive until the port is back.
        time.sleep(2)
        early = _by_producer(data_host)
        time.sleep(OUTAGE_S - (time.monotonic() - cut_at))
        late = _by_producer(data_host)
        network.restore("agent1")
        outage_s = time.monotonic() - cut_at
        outputs = {host: process.communicate(timeout=120)[0] for host, process in producers.items()}
        restored_at = time.monotonic()
        total = len(AGENTS) * RECORDS
        caught_up_s = wait_until(
            lambda: data_host.count("SELECT count(*) FROM llm_traces") >= total,
            120,
            "every record stored",
        )
        wait_until(
            lambda: data_host.count("SELECT count(*) FROM metric_samples") >= len(AGENTS) * SAMPLES,
            60,
            "every observation stored",
        )
        assert worker.poll() is None, "the worker must ride out the cut"
        worker.send_signal(signal.SIGTERM)
        _, worker_err = worker.communicate(timeout=60)
    finally:
        for process in [*producers.values(), worker]:
            _stop(process)
    assert worker.returncode == 0, worker_err[-2000:]
    assert late["agent1"] == early["agent1"], "agent1 was cut off: none of its rows arrive"
    assert late["agent2"] > early["agent2"], "agent2 kept sending through the cut"
    # Agent1's emitter said so while it buffered (at most one line per 10 s).
    buffered = [int(n) for n in re.findall(r"(\d+) records buffered", logs["agent1"].read_text())]
    assert buffered, logs["agent1"].read_text()

    # Each emitter: everything it accepted was sent, nothing dropped.
    stats: dict[str, dict[str, int]] = {}
    for host, out in outputs.items():
        assert producers[host].returncode == 0, logs[host].read_text()[-2000:]
        stats[host] = _emitter_stats(out.strip().splitlines()[-1])
        assert stats[host] == {
            "accepted": RECORDS + SAMPLES,
            "sent": RECORDS + SAMPLES,
            "dropped": 0,
        }
    in_redis = data_host.redis_figures(keys)
    for host in AGENTS:
        assert in_redis["emitters"][host]["records"] == stats[host]["sent"]
        assert in_redis["emitters"][host].get("dropped", 0) == 0
    assert in_redis["pending"] == 0
    live_costs = in_redis["plan_costs"]

    # PostgreSQL: every record once, from the producer that sent it.
    assert _by_producer(data_host) == dict.fromkeys(AGENTS, RECORDS)
    assert data_host.count("SELECT count(DISTINCT decision_id) FROM llm_traces") == total
    assert data_host.count("SELECT count(*) FROM metric_samples") == len(AGENTS) * SAMPLES

    # The live counters equal the sums of the rows.
    [(prompt, completion)] = data_host.rows(
        "SELECT sum(prompt_tokens), sum(completion_tokens) FROM llm_traces"
    )
    [(samples, sample_sum)] = data_host.rows("SELECT count(*), sum(value) FROM metric_samples")
    live = _live(network, env)
    assert (
        live["actor.token_usage", "prompt"]["count"],
        live["actor.token_usage", "prompt"]["sum"],
    ) == (total, prompt)
    assert (
        live["actor.token_usage", "completion"]["count"],
        live["actor.token_usage", "completion"]["sum"],
    ) == (total, completion)
    observed = live["tool.invocation_duration_ms", "search"]
    assert (observed["count"], observed["sum"]) == (samples, sample_sum)
    stored_costs = dict(
        data_host.rows("SELECT plan_id, sum(cost_usd) FROM llm_traces GROUP BY plan_id")
    )
    assert set(stored_costs) == set(PLANS)
    assert all(math.isclose(live_costs[p], stored_costs[p], rel_tol=1e-9) for p in PLANS), (
        live_costs,
        stored_costs,
    )
    report(
        "link_cut",
        {
            "records_sent": total,
            "observations_sent": len(AGENTS) * SAMPLES,
            "rows_stored": total,
            "emitter_dropped": 0,
            "link_down_s": round(outage_s, 2),
            "agent1_rows_at_cut_plus_2s": early["agent1"],
            "agent1_rows_at_restore": late["agent1"],
            "agent2_rows_during_cut": late["agent2"] - early["agent2"],
            "agent1_buffered_as_logged": buffered,
            "all_stored_after_producers_done_s": round(caught_up_s, 2),
            "producers_done_after_restore_s": round(restored_at - cut_at - outage_s, 2),
        },
    )
