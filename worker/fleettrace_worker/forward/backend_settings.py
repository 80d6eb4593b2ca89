"""The checks every forwarding backend's settings make (``langsmith``, ``otlp``),
written once so both refuse a bad value the same way: a clear one-line
:class:`~fleettrace.errors.ConfigurationError` naming the variable, never a secret.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from urllib.parse import urlsplit

from fleettrace.errors import ConfigurationError


def positive_number(env: Mapping[str, str], name: str, default: float, *, unit: str = "") -> float:
    """``env[name]`` as a finite number above zero; ``default`` when unset or blank.
    ``unit`` (``" of seconds"``) completes the message of a bad value."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number{unit}, got {raw!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"{name} must be a positive number{unit}, got {raw!r}")
    return value


def check_between(name: str, value: int, low: int, high: int) -> None:
    """Refuse ``value`` outside ``low..high`` (``name``: the variable that sets it)."""
    if not low <= value <= high:
        raise ConfigurationError(f"{name} must be between {low} and {high}, got {value!r}")


def check_endpoint(backend: str, endpoint: str, credentials: str) -> None:
    """Refuse an endpoint that is not an http(s) URL with a host, or that carries a
    user or password (``credentials`` says where they belong instead): a URL is
    logged and shown, a secret must not be."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"{backend} endpoint {endpoint!r} must be an http:// or https:// URL"
        )
    if parts.password is not None or parts.username is not None:
        raise ConfigurationError(f"{backend} endpoint must not carry credentials; {credentials}")
