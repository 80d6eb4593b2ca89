"""Where the OTLP backend is, what to tell it, and how long fleettrace keeps trying.

The variables are OpenTelemetry's standard exporter variables, so a worker is
pointed at Langfuse, Phoenix, LangSmith or a Collector with the same settings an
OpenTelemetry SDK would take (docs/otlp.md):

- ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is used as it is; otherwise
  ``OTEL_EXPORTER_OTLP_ENDPOINT`` with ``/v1/traces`` appended, as the
  specification says for OTLP/HTTP. The group is enabled when either is set
  (and ``OTEL_SDK_DISABLED`` is not ``true``).
- ``OTEL_EXPORTER_OTLP_TRACES_HEADERS`` or ``OTEL_EXPORTER_OTLP_HEADERS``:
  ``key=value`` pairs separated by commas, values percent-decoded. They usually
  carry an API key, so they are kept out of ``repr`` and every message (only the
  header names are shown).
- ``OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT`` in milliseconds (default 10,000).
- ``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL``: only ``http/protobuf`` is spoken; any
  other value stops the worker with a clear message rather than being ignored.
- ``OTEL_EXPORTER_OTLP_(TRACES_)COMPRESSION``: ``gzip`` (the default here) or
  ``none``.
- ``OTEL_SERVICE_NAME``: the resource's ``service.name``; by default the namespace.

fleettrace's own: ``FLEETTRACE_OTLP_RETRY_FOR_S`` (default 3,600),
``FLEETTRACE_OTLP_BACKOFF_INITIAL_S`` / ``_BACKOFF_MAX_S`` (1 / 60), and
``FLEETTRACE_OTLP_BATCH_RECORDS`` (records per export request, default 500), and
``FLEETTRACE_OTLP_METRICS=true`` to send GenAI client metrics too, to
``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` or the base endpoint with ``/v1/metrics``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote

from fleettrace.errors import ConfigurationError
from fleettrace.settings import environment
from fleettrace_worker.forward.backend_settings import (
    check_between,
    check_endpoint,
    positive_number,
)

TRACES_PATH: Final = "/v1/traces"
METRICS_PATH: Final = "/v1/metrics"
PROTOCOL: Final = "http/protobuf"
DEFAULT_RETRY_FOR_S: Final = 3600.0
DEFAULT_BACKOFF_INITIAL_S: Final = 1.0
DEFAULT_BACKOFF_MAX_S: Final = 60.0
DEFAULT_TIMEOUT_MS: Final = 10_000
DEFAULT_BATCH_RECORDS: Final = 500
_MAX_BATCH_RECORDS: Final = 10_000

ENDPOINT_VARIABLE: Final = "OTEL_EXPORTER_OTLP_ENDPOINT"
TRACES_ENDPOINT_VARIABLE: Final = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
METRICS_ENDPOINT_VARIABLE: Final = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"
METRICS_VARIABLE: Final = "FLEETTRACE_OTLP_METRICS"
HEADERS_VARIABLE: Final = "OTEL_EXPORTER_OTLP_HEADERS"
SERVICE_NAME_VARIABLE: Final = "OTEL_SERVICE_NAME"
RETRY_FOR_VARIABLE: Final = "FLEETTRACE_OTLP_RETRY_FOR_S"
BACKOFF_INITIAL_VARIABLE: Final = "FLEETTRACE_OTLP_BACKOFF_INITIAL_S"
BACKOFF_MAX_VARIABLE: Final = "FLEETTRACE_OTLP_BACKOFF_MAX_S"
BATCH_RECORDS_VARIABLE: Final = "FLEETTRACE_OTLP_BATCH_RECORDS"
_COMPRESSIONS: Final = ("gzip", "none")


def _signal(env: Mapping[str, str], name: str) -> tuple[str, str] | None:
    """``OTEL_EXPORTER_OTLP_TRACES_<name>`` before ``OTEL_EXPORTER_OTLP_<name>``:
    the variable found and its value."""
    for variable in (f"OTEL_EXPORTER_OTLP_TRACES_{name}", f"OTEL_EXPORTER_OTLP_{name}"):
        value = env.get(variable, "").strip()
        if value:
            return variable, value
    return None


def parse_headers(text: str, variable: str = HEADERS_VARIABLE) -> dict[str, str]:
    """``k1=v1,k2=v2`` as the specification writes it (values percent-encoded).
    A malformed pair names its position, never its value (it may be a secret)."""
    headers: dict[str, str] = {}
    for index, pair in enumerate(text.split(","), start=1):
        if not pair.strip():
            continue
        name, sep, value = pair.partition("=")
        name = unquote(name).strip()
        if not sep or not name or any(ch in name for ch in " \t\r\n:"):
            raise ConfigurationError(
                f"{variable}: pair {index} is not name=value (names without spaces or ':')"
            )
        value = unquote(value).strip()
        if any(ch in value for ch in "\r\n"):
            raise ConfigurationError(f"{variable}: the value of {name!r} holds a line break")
        headers[name] = value
    return headers


def signal_endpoint(env: Mapping[str, str], own_variable: str, path: str) -> str | None:
    """A signal's own endpoint as it is, else the base endpoint with ``path``."""
    own = env.get(own_variable, "").strip()
    if own:
        return own
    base = env.get(ENDPOINT_VARIABLE, "").strip()
    if base:
        return base.rstrip("/") + path
    return None


def traces_endpoint(env: Mapping[str, str]) -> str | None:
    return signal_endpoint(env, TRACES_ENDPOINT_VARIABLE, TRACES_PATH)


@dataclass(frozen=True, slots=True)
class OtlpSettings:
    """Settings of the ``otlp`` consumer group (the endpoint is the full traces URL)."""

    endpoint: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    service_name: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_MS / 1000
    gzip: bool = True
    retry_for_s: float = DEFAULT_RETRY_FOR_S
    backoff_initial_s: float = DEFAULT_BACKOFF_INITIAL_S
    backoff_max_s: float = DEFAULT_BACKOFF_MAX_S
    batch_records: int = DEFAULT_BATCH_RECORDS
    #: Where GenAI client metrics go; None: not sent (``FLEETTRACE_OTLP_METRICS``).
    metrics_endpoint: str | None = None

    def __post_init__(self) -> None:
        check_between(BATCH_RECORDS_VARIABLE, self.batch_records, 1, _MAX_BATCH_RECORDS)
        for endpoint in (self.endpoint, self.metrics_endpoint):
            if endpoint is not None:
                check_endpoint("OTLP", endpoint, f"put them in {HEADERS_VARIABLE}")

    @property
    def enabled(self) -> bool:
        return self.endpoint is not None

    def __repr__(self) -> str:
        # Header values are API keys more often than not: names only.
        names = ", ".join(sorted(self.headers))
        return (
            f"OtlpSettings(endpoint={self.endpoint!r}, headers=[{names}] (values hidden), "
            f"service_name={self.service_name!r}, timeout_s={self.timeout_s!r}, "
            f"gzip={self.gzip!r}, retry_for_s={self.retry_for_s!r}, "
            f"backoff_initial_s={self.backoff_initial_s!r}, "
            f"backoff_max_s={self.backoff_max_s!r}, batch_records={self.batch_records!r}, "
            f"metrics_endpoint={self.metrics_endpoint!r})"
        )

    __str__ = __repr__

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OtlpSettings:
        env = environment() if environ is None else environ
        if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return cls()
        protocol = _signal(env, "PROTOCOL")
        if protocol is not None and protocol[1] != PROTOCOL:
            raise ConfigurationError(
                f"{protocol[0]}={protocol[1]!r}: the otlp group speaks {PROTOCOL} only"
            )
        compression = _signal(env, "COMPRESSION")
        if compression is not None and compression[1] not in _COMPRESSIONS:
            raise ConfigurationError(
                f"{compression[0]} must be one of {', '.join(_COMPRESSIONS)}, "
                f"got {compression[1]!r}"
            )
        headers = _signal(env, "HEADERS")
        timeout = _signal(env, "TIMEOUT")
        timeout_ms = (
            positive_number({timeout[0]: timeout[1]}, timeout[0], DEFAULT_TIMEOUT_MS)
            if timeout is not None
            else DEFAULT_TIMEOUT_MS
        )
        metrics = env.get(METRICS_VARIABLE, "").strip().lower()
        if metrics not in ("", "true", "false"):
            raise ConfigurationError(f"{METRICS_VARIABLE} must be true or false, got {metrics!r}")
        metrics_endpoint = None
        if metrics == "true":
            metrics_endpoint = signal_endpoint(env, METRICS_ENDPOINT_VARIABLE, METRICS_PATH)
            if metrics_endpoint is None:
                raise ConfigurationError(
                    f"{METRICS_VARIABLE}=true needs {ENDPOINT_VARIABLE} "
                    f"or {METRICS_ENDPOINT_VARIABLE}"
                )
        batch = env.get(BATCH_RECORDS_VARIABLE, "").strip()
        if batch and not batch.isdigit():
            raise ConfigurationError(f"{BATCH_RECORDS_VARIABLE} must be a whole number")
        return cls(
            endpoint=traces_endpoint(env),
            headers=parse_headers(headers[1], headers[0]) if headers is not None else {},
            service_name=env.get(SERVICE_NAME_VARIABLE, "").strip() or None,
            timeout_s=timeout_ms / 1000,
            gzip=compression is None or compression[1] == "gzip",
            retry_for_s=positive_number(env, RETRY_FOR_VARIABLE, DEFAULT_RETRY_FOR_S),
            backoff_initial_s=positive_number(
                env, BACKOFF_INITIAL_VARIABLE, DEFAULT_BACKOFF_INITIAL_S
            ),
            backoff_max_s=positive_number(env, BACKOFF_MAX_VARIABLE, DEFAULT_BACKOFF_MAX_S),
            batch_records=int(batch) if batch else DEFAULT_BATCH_RECORDS,
            metrics_endpoint=metrics_endpoint,
        )
