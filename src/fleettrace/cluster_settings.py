"""The Redis Cluster settings: whether the URL is a cluster's seed node, and how many
replicas a write waits for. Apart from :mod:`fleettrace.cluster` because they are read
with the rest of the settings (``EmitterSettings.from_env``, the worker's context),
and that must not load redis-py's cluster client: a process that never asks for a
cluster never imports it (``tests/test_import_cost.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from fleettrace.environment import (
    REDIS_CLUSTER_VARIABLE,
    WAIT_REPLICAS_VARIABLE,
    WAIT_TIMEOUT_VARIABLE,
    environment,
)
from fleettrace.errors import ConfigurationError

DEFAULT_WAIT_TIMEOUT_MS: Final = 1000
AUTO: Final = "auto"
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


def parse_flag(name: str, text: str) -> bool:
    """``true``/``false`` (also 1/0, yes/no, on/off) of the variable ``name``."""
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigurationError(f"{name} must be true or false, got {text!r}")


def cluster_from_env(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``FLEETTRACE_REDIS_CLUSTER`` asks for the cluster client (blank: no)."""
    env = environment() if environ is None else environ
    text = env.get(REDIS_CLUSTER_VARIABLE, "").strip()
    return parse_flag(REDIS_CLUSTER_VARIABLE, text) if text else False


@dataclass(frozen=True, slots=True)
class ReplicaWait:
    """How many replicas a write waits for (``WAIT replicas timeout_ms``).

    ``replicas`` None is *auto*: one replica on a cluster whose master of the
    namespace has one connected, none otherwise (a single Redis, or a master whose
    replicas are gone). 0 never waits. A number is waited for whatever the topology.
    """

    replicas: int | None = None
    timeout_ms: int = DEFAULT_WAIT_TIMEOUT_MS

    def __post_init__(self) -> None:
        if self.replicas is not None and (type(self.replicas) is not int or self.replicas < 0):
            raise ConfigurationError(
                f"wait replicas must be {AUTO} or a whole number, got {self.replicas!r}"
            )
        if type(self.timeout_ms) is not int or self.timeout_ms < 1:
            raise ConfigurationError(
                f"wait timeout must be a positive number of ms, got {self.timeout_ms!r}"
            )

    @classmethod
    def parse(cls, replicas: str | int | None, timeout_ms: str | int | None = None) -> ReplicaWait:
        """From the text of the two settings (``auto``/blank/None: auto)."""
        count: int | None = None
        if isinstance(replicas, int):
            count = replicas
        elif replicas is not None and replicas.strip() and replicas.strip().lower() != AUTO:
            try:
                count = int(replicas)
            except ValueError:
                raise ConfigurationError(
                    f"{WAIT_REPLICAS_VARIABLE} must be {AUTO} or a whole number, got {replicas!r}"
                ) from None
        timeout = DEFAULT_WAIT_TIMEOUT_MS
        if isinstance(timeout_ms, int):
            timeout = timeout_ms
        elif timeout_ms is not None and timeout_ms.strip():
            try:
                timeout = int(timeout_ms)
            except ValueError:
                raise ConfigurationError(
                    f"{WAIT_TIMEOUT_VARIABLE} must be a whole number of ms, got {timeout_ms!r}"
                ) from None
        return cls(count, timeout)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ReplicaWait:
        env = environment() if environ is None else environ
        return cls.parse(env.get(WAIT_REPLICAS_VARIABLE), env.get(WAIT_TIMEOUT_VARIABLE))
