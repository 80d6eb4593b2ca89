"""A real Redis Cluster for the tests: three masters and three replicas on free loopback
ports, in a temporary directory, stopped by pid.

``cluster-node-timeout`` is short (1000 ms) so a killed master is replaced within
seconds. The batch function library is loaded on every master, as a worker or
``fleettrace migrate`` would.

    from tests.cluster import redis_cluster  # the module-scoped fixture
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from fleettrace.batch_script import load_library
from fleettrace.connection import connect_redis
from tests.servers import _wait_for_exit, _wait_for_port, free_port, redis_program
from tests.waiting import wait_until

NODE_TIMEOUT_MS = 1000


#: A node also listens on its port + 10000 (the cluster bus), so ports stop there.
HIGHEST_PORT = 55535


def _node_port() -> int:
    """A free loopback port whose bus port (+10000) is free too."""
    while True:
        port = free_port()
        if port <= HIGHEST_PORT and _free(port + 10000):
            return port


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class LocalCluster:
    """Six redis-server processes made one cluster with ``redis-cli --cluster create``."""

    def __init__(self, masters: int = 3) -> None:
        self.count = masters * 2
        self.dir = Path(tempfile.mkdtemp(prefix="fleettrace-cluster-"))
        self.ports: list[int] = []
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.program = redis_program().path

    @property
    def url(self) -> str:
        """The seed node's URL: what FLEETTRACE_REDIS_URL names."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> None:
        cli = self.cli()
        while len(self.ports) < self.count:
            port = _node_port()
            if port not in self.ports:
                self.ports.append(port)
        for port in self.ports:
            self._start_node(port)
        subprocess.run(
            [
                cli, "--cluster", "create",
                *(f"127.0.0.1:{port}" for port in self.ports),
                "--cluster-replicas", "1", "--cluster-yes",
            ],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        wait_until(self.healthy, 60, "the cluster to reach cluster_state:ok with its replicas")
        client = self.client()
        try:
            load_library(client)
        finally:
            client.close()

    def cli(self) -> str:
        """redis-cli, next to redis-server or on PATH; the tests are skipped without it."""
        beside = Path(self.program).with_name("redis-cli")
        found = str(beside) if beside.is_file() else shutil.which("redis-cli")
        if found is None:
            pytest.skip("needs redis-cli (next to redis-server or on PATH) to make a cluster")
        return found

    def _start_node(self, port: int) -> None:
        node_dir = self.dir / str(port)
        node_dir.mkdir(exist_ok=True)
        args = [
            str(self.program),
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(node_dir / "nodes.conf"),
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(node_dir),
            "--logfile", str(node_dir / "redis.log"),
        ]  # fmt: skip
        out = (node_dir / "redis.out").open("wb")
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        self.procs[port] = proc
        _wait_for_port(port, proc, node_dir / "redis.out", node_dir / "redis.log")

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)

    def healthy(self) -> bool:
        """cluster_state:ok on every running node, every slot served, every master with
        a replica that is in sync."""
        alive = [port for port, proc in self.procs.items() if proc.poll() is None]
        for port in alive:
            client = self.node(port)
            try:
                if client.cluster("info").get("cluster_state") != "ok":
                    return False
                role = client.info("replication")
                if role["role"] == "master" and not any(
                    key.startswith("slave") and role[key].get("state") == "online" for key in role
                ):
                    return False
            except redis.RedisError:
                return False
            finally:
                client.close()
        return True

    def client(self) -> redis.Redis:
        return connect_redis(self.url, cluster=True)

    def master_of(self, key: str) -> int:
        """The port of the master that serves ``key``'s slot now, asked of a live node."""
        for port, proc in self.procs.items():
            if proc.poll() is not None:
                continue
            direct = RedisCluster(host="127.0.0.1", port=port)
            try:
                return int(direct.get_node_from_key(key).port)
            except redis.RedisError:
                continue
            finally:
                direct.close()
        raise AssertionError("no node of the cluster answers")

    def replica_of(self, master_port: int) -> int:
        """The port of a replica of the master on ``master_port``."""
        info = self.node(master_port).info("replication")
        for key, value in info.items():
            if key.startswith("slave") and isinstance(value, dict):
                return int(value["port"])
        raise AssertionError(f"the master on {master_port} has no replica")

    def failover(self, replica_port: int, *how: str) -> None:
        """``CLUSTER FAILOVER [FORCE|TAKEOVER]`` on a replica, then wait until every
        live node sees it as a master."""
        client = self.node(replica_port)
        try:
            client.execute_command("CLUSTER FAILOVER", *how)
        finally:
            client.close()
        self.wait_for_master(replica_port)

    def wait_for_master(self, port: int) -> None:
        """Wait until every live node's CLUSTER NODES shows the node on ``port`` as a
        master (a failover is complete when the cluster agrees on it)."""
        wait_until(lambda: self._agreed(port), 30, f"the node on {port} to be master")

    def _agreed(self, port: int) -> bool:
        for other, proc in self.procs.items():
            if proc.poll() is not None:
                continue
            client = self.node(other)
            try:
                nodes: Any = client.cluster("nodes")
            except redis.RedisError:
                return False
            finally:
                client.close()
            flags = str(nodes.get(f"127.0.0.1:{port}", {}).get("flags", ""))
            if "master" not in flags.split(","):
                return False
        return True

    def masters(self) -> list[int]:
        """The ports of the live masters."""
        found = []
        for port, proc in self.procs.items():
            if proc.poll() is None:
                node = self.node(port)
                try:
                    if node.info("replication")["role"] == "master":
                        found.append(port)
                finally:
                    node.close()
        return found

    def move_slot(self, slot: int, source: int, target: int, *, step: int = 2) -> int:
        """Move ``slot`` from the master on ``source`` to the one on ``target`` as
        ``redis-cli --cluster reshard`` does: IMPORTING/MIGRATING, MIGRATE the keys a
        few at a time (clients meet ASK and TRYAGAIN meanwhile), then give the slot to
        ``target`` on every master (clients meet MOVED). Returns the keys moved."""
        src, dst = self.node(source), self.node(target)
        moved = 0
        try:
            src_id = src.execute_command("CLUSTER", "MYID").decode()
            dst_id = dst.execute_command("CLUSTER", "MYID").decode()
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
            while names := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, step):
                src.migrate("127.0.0.1", target, names, 0, 5000)
                moved += len(names)
            # The new owner first, then the old one, then the rest (as redis-cli does).
            others = [p for p in self.masters() if p not in (source, target)]
            for port in (target, source, *others):
                node = self.node(port)
                try:
                    node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
                finally:
                    node.close()
        finally:
            src.close()
            dst.close()
        return moved

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port``: no goodbye to its replica or its clients."""
        proc = self.procs[port]
        proc.send_signal(signal.SIGKILL)
        _wait_for_exit(proc)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            _wait_for_exit(proc)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[LocalCluster]:
    """A cluster for the tests of one module (each test uses namespaces of its own)."""
    cluster = LocalCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()
