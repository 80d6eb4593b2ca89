"""Where the worker side finds PostgreSQL; read at the edge (the CLI), not deep inside."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from fleettrace.settings import first_set

DATABASE_URL_VARIABLES: Final = ("FLEETTRACE_DATABASE_URL", "DATABASE_URL")
DEFAULT_DATABASE_URL: Final = "postgresql://postgres@127.0.0.1:5432/postgres"


def database_url_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """``FLEETTRACE_DATABASE_URL``, else ``DATABASE_URL``, else ``None``."""
    return first_set(DATABASE_URL_VARIABLES, environ)
