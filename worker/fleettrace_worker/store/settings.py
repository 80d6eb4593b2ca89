"""Where the worker side finds PostgreSQL; read at the edge (the CLI), not deep inside."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from fleettrace.environment import first_set
from fleettrace.errors import ConfigurationError

DATABASE_URL_VARIABLES: Final = ("FLEETTRACE_DATABASE_URL", "DATABASE_URL")
DEFAULT_DATABASE_URL: Final = "postgresql://postgres@127.0.0.1:5432/postgres"


def database_url_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """``FLEETTRACE_DATABASE_URL``, else ``DATABASE_URL``, else ``None``."""
    return first_set(DATABASE_URL_VARIABLES, environ)


#: A replica the reading commands and the dashboard read from, when set (writes and
#: migrations always go to the primary's URL).
DATABASE_READ_URL_VARIABLE: Final = "FLEETTRACE_DATABASE_READ_URL"
#: Days after today whose daily partitions `fleettrace migrate` and the worker make ahead.
PARTITION_DAYS_VARIABLE: Final = "FLEETTRACE_PARTITION_DAYS_AHEAD"
DEFAULT_PARTITION_DAYS: Final = 7
_MAX_PARTITION_DAYS: Final = 366


def database_read_url_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """``FLEETTRACE_DATABASE_READ_URL``, else ``None`` (read from the primary)."""
    return first_set((DATABASE_READ_URL_VARIABLE,), environ)


def partition_days_ahead(environ: Mapping[str, str] | None = None) -> int:
    """``FLEETTRACE_PARTITION_DAYS_AHEAD`` (0-366), else 7."""
    text = first_set((PARTITION_DAYS_VARIABLE,), environ)
    if text is None:
        return DEFAULT_PARTITION_DAYS
    try:
        days = int(text)
    except ValueError:
        days = -1
    if not 0 <= days <= _MAX_PARTITION_DAYS:
        raise ConfigurationError(
            f"{PARTITION_DAYS_VARIABLE} must be a whole number of days from 0 to "
            f"{_MAX_PARTITION_DAYS}, got {text!r}"
        )
    return days
