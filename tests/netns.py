"""Hosts made of Linux network namespaces, for tests of a fleet spread over machines.

A switch namespace holds a Linux bridge; each host is a namespace of its own joined to
the bridge by a veth pair (``eth0`` on the host's side, ``to-<host>`` on the switch's),
with one address on ``10.77.0.0/24``. The addresses exist only inside the namespaces:
the machine's own namespace has no route to them. Names carry a tag unique to the run,
so runs side by side do not meet.

    with Network({"agent1": "10.77.0.11", "data": "10.77.0.3"}) as net:
        subprocess.Popen(net.command("agent1", [sys.executable, "-m", ...]))
        net.cut("agent1")                  # its port on the switch down: the cable pulled
        net.restore("agent1")
        with entered(net.namespace("data")):
            ...                            # this thread, its sockets and children are there

Making namespaces needs root (or CAP_NET_ADMIN) and iproute2: :func:`unavailable` says
why not, for a test to skip with.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType

#: The hosts' network, with its prefix length.
SUBNET = "10.77.0.0/24"
PREFIX_LENGTH = 24
#: setns(2) flag for a network namespace.
CLONE_NEWNET = 0x40000000
#: Where ``ip netns add`` keeps its namespaces.
NETNS_DIR = "/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def unavailable() -> str | None:
    """Why network namespaces cannot be made on this machine, or None if they can."""
    if shutil.which("ip") is None:
        return "network namespaces need iproute2's `ip`, which is not installed"
    probe = f"ft-probe-{uuid.uuid4().hex[:8]}"
    try:
        _ip("netns", "add", probe)
    except RuntimeError as error:
        return f"network namespaces are not permitted here (root or CAP_NET_ADMIN): {error}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True, check=False)
    return None


def addresses_in(subnet: str) -> list[str]:
    """The addresses of the calling thread's namespace that lie in ``subnet``."""
    done = subprocess.run(
        ["ip", "-o", "-4", "addr", "show", "to", subnet],
        capture_output=True,
        text=True,
        check=True,
    )
    return [line.split()[3] for line in done.stdout.splitlines()]


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


@contextmanager
def entered(namespace: str) -> Iterator[None]:
    """The calling thread inside ``namespace`` until the block ends. Sockets made in the
    block stay in that namespace after it; processes started in it run there."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        there = os.open(f"{NETNS_DIR}/{namespace}", os.O_RDONLY)
        try:
            _setns(there)
        finally:
            os.close(there)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


class Network:
    """A switch and the hosts on it (name -> address), made on entry, removed on exit."""

    def __init__(self, hosts: Mapping[str, str]) -> None:
        self.tag = uuid.uuid4().hex[:8]
        self.hosts = dict(hosts)
        self.switch = f"ft{self.tag}-switch"
        self._made: list[str] = []

    def namespace(self, host: str) -> str:
        return f"ft{self.tag}-{host}"

    @staticmethod
    def port(host: str) -> str:
        """The switch's side of the host's cable (interface names hold 15 bytes)."""
        return f"to-{host}"[:15]

    def build(self) -> None:
        _ip("netns", "add", self.switch)
        self._made.append(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for host, address in self.hosts.items():
            namespace = self.namespace(host)
            _ip("netns", "add", namespace)
            self._made.append(namespace)
            port = self.port(host)
            peer = ("peer", "name", "eth0", "netns", namespace)
            _ip("-n", self.switch, "link", "add", port, "type", "veth", *peer)
            _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
            _ip("-n", namespace, "addr", "add", f"{address}/{PREFIX_LENGTH}", "dev", "eth0")
            _ip("-n", namespace, "link", "set", "eth0", "up")
            _ip("-n", namespace, "link", "set", "lo", "up")

    def command(self, host: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside ``host``'s namespace."""
        return ["ip", "netns", "exec", self.namespace(host), *argv]

    def cut(self, host: str) -> None:
        """Take the host's port on the switch down: its packets go nowhere."""
        _ip("-n", self.switch, "link", "set", self.port(host), "down")

    def restore(self, host: str) -> None:
        _ip("-n", self.switch, "link", "set", self.port(host), "up")

    def close(self) -> None:
        """Remove every namespace made (their veth pairs go with them). Processes still
        inside keep a namespace alive: stop them first."""
        while self._made:
            namespace = self._made.pop()
            subprocess.run(["ip", "netns", "delete", namespace], capture_output=True, check=False)

    def __enter__(self) -> Network:
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()
