"""Where LangSmith is, who we are to it, and how long fleettrace keeps trying.

The variables are the ones the ``langsmith`` package reads (``LANGSMITH_*`` first,
then ``LANGCHAIN_*``), read here once from an explicit mapping: the package caches
its own environment lookups for the life of the process, which would make a
changed setting invisible. The API key is held out of ``repr`` and every message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from fleettrace.errors import ConfigurationError
from fleettrace.settings import environment
from fleettrace_worker.forward.backend_settings import (
    check_between,
    check_endpoint,
    positive_number,
)

DEFAULT_ENDPOINT: Final = "https://api.smith.langchain.com"
DEFAULT_PROJECT: Final = "default"
DEFAULT_RETRY_FOR_S: Final = 3600.0
DEFAULT_BACKOFF_INITIAL_S: Final = 1.0
DEFAULT_BACKOFF_MAX_S: Final = 60.0
DEFAULT_REQUEST_TIMEOUT_S: Final = 10.0
DEFAULT_CONCURRENCY: Final = 8

_PREFIXES: Final = ("LANGSMITH_", "LANGCHAIN_")
_TRUE: Final = "true"
RETRY_FOR_VARIABLE: Final = "FLEETTRACE_LANGSMITH_RETRY_FOR_S"
BACKOFF_MAX_VARIABLE: Final = "FLEETTRACE_LANGSMITH_BACKOFF_MAX_S"
BACKOFF_INITIAL_VARIABLE: Final = "FLEETTRACE_LANGSMITH_BACKOFF_INITIAL_S"
REQUEST_TIMEOUT_VARIABLE: Final = "FLEETTRACE_LANGSMITH_TIMEOUT_S"
CONCURRENCY_VARIABLE: Final = "FLEETTRACE_LANGSMITH_CONCURRENCY"
_MAX_CONCURRENCY: Final = 32


def _lookup(env: Mapping[str, str], name: str) -> str | None:
    for prefix in _PREFIXES:
        value = env.get(prefix + name, "").strip()
        if value:
            return value
    return None


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    return positive_number(env, name, default, unit=" of seconds")


def _count(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit():
        raise ConfigurationError(f"{name} must be a whole number, got {raw!r}")
    return int(raw)


@dataclass(frozen=True, slots=True)
class LangSmithSettings:
    """Settings of the ``langsmith`` consumer group.

    ``retry_for_s`` bounds how long one record is retried through 429s, 5xx answers,
    timeouts and connection errors before it becomes a dead letter; the backoff
    between attempts doubles from ``backoff_initial_s`` up to ``backoff_max_s``.
    """

    enabled: bool = False
    endpoint: str = DEFAULT_ENDPOINT
    api_key: str | None = field(default=None, repr=False)
    project: str = DEFAULT_PROJECT
    retry_for_s: float = DEFAULT_RETRY_FOR_S
    backoff_initial_s: float = DEFAULT_BACKOFF_INITIAL_S
    backoff_max_s: float = DEFAULT_BACKOFF_MAX_S
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    #: Requests in flight at once: one run is one request, and LangSmith is far away.
    concurrency: int = DEFAULT_CONCURRENCY

    def __post_init__(self) -> None:
        check_between(CONCURRENCY_VARIABLE, self.concurrency, 1, _MAX_CONCURRENCY)
        check_endpoint("LangSmith", self.endpoint, "set LANGSMITH_API_KEY")

    def __repr__(self) -> str:
        key = "'***'" if self.api_key else "None"
        return (
            f"LangSmithSettings(enabled={self.enabled!r}, endpoint={self.endpoint!r}, "
            f"api_key={key}, project={self.project!r}, retry_for_s={self.retry_for_s!r}, "
            f"backoff_initial_s={self.backoff_initial_s!r}, "
            f"backoff_max_s={self.backoff_max_s!r}, "
            f"request_timeout_s={self.request_timeout_s!r}, concurrency={self.concurrency!r})"
        )

    __str__ = __repr__

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LangSmithSettings:
        """Tracing is on when ``LANGSMITH_TRACING_V2``, ``LANGCHAIN_TRACING_V2``,
        ``LANGSMITH_TRACING`` or ``LANGCHAIN_TRACING`` is ``true``, as for the
        ``langsmith`` package itself."""
        env = environment() if environ is None else environ
        tracing = _lookup(env, "TRACING_V2") or _lookup(env, "TRACING") or ""
        return cls(
            enabled=tracing.lower() == _TRUE,
            endpoint=(_lookup(env, "ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/"),
            api_key=_lookup(env, "API_KEY"),
            project=_lookup(env, "PROJECT") or DEFAULT_PROJECT,
            retry_for_s=_seconds(env, RETRY_FOR_VARIABLE, DEFAULT_RETRY_FOR_S),
            backoff_initial_s=_seconds(env, BACKOFF_INITIAL_VARIABLE, DEFAULT_BACKOFF_INITIAL_S),
            backoff_max_s=_seconds(env, BACKOFF_MAX_VARIABLE, DEFAULT_BACKOFF_MAX_S),
            request_timeout_s=_seconds(env, REQUEST_TIMEOUT_VARIABLE, DEFAULT_REQUEST_TIMEOUT_S),
            concurrency=_count(env, CONCURRENCY_VARIABLE, DEFAULT_CONCURRENCY),
        )
