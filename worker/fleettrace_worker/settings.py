"""Every setting the worker side takes from the environment, read in this one module.

:class:`WorkerEnvironment` is read once at the edge (the CLI, :func:`read_environment`)
and nests a group per part that has its own knobs: the worker's loops
(``FLEETTRACE_WORKER_*``, :class:`WorkerTuning`), the dashboard
(``FLEETTRACE_DASHBOARD_*``), LangSmith (the ``langsmith`` package's variables,
``LANGSMITH_*`` before ``LANGCHAIN_*``, and ``FLEETTRACE_LANGSMITH_*``) and OTLP (the
OpenTelemetry exporter variables, ``OTEL_*``, and ``FLEETTRACE_OTLP_*``). The CLI
combines it with its arguments into the :class:`~fleettrace_worker.context.WorkerSettings`
a worker runs with; nothing deeper reads the environment.

It is built on the agent side's :class:`~fleettrace.settings.EnvironmentSettings`, so
a bad value is the same one line naming its variable, URLs are shown with their
passwords replaced by ``***`` and the dashboard token is a ``SecretStr``. The
LangSmith and OTLP groups keep their own parsers (``forward/*/settings.py``), which
follow those packages' precedence rules exactly, and are read here from the same
environment. docs/configuration.md lists every variable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, ClassVar, Final, Literal

from pydantic import AliasChoices, Field, InstanceOf, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from fleettrace.connection import REDIS_URL_VARIABLES
from fleettrace.settings import (
    NAMESPACE_VARIABLE,
    EnvironmentSettings,
    NonNegativeCount,
    NonNegativeSeconds,
    PositiveCount,
    PositiveSeconds,
    environment,
)
from fleettrace_worker.forward.langsmith.settings import LangSmithSettings
from fleettrace_worker.forward.otlp.settings import OtlpSettings
from fleettrace_worker.keys import METRICS_PLANS_MAX
from fleettrace_worker.store.settings import DATABASE_URL_VARIABLES

WORKER_PREFIX: Final = "FLEETTRACE_WORKER_"
DASHBOARD_PREFIX: Final = "FLEETTRACE_DASHBOARD_"
LOG_LEVEL_VARIABLE: Final = "FLEETTRACE_LOG_LEVEL"
RUNTIME_DIR_VARIABLE: Final = "FLEETTRACE_RUNTIME_DIR"
DATA_DIR_VARIABLE: Final = "FLEETTRACE_DATA_DIR"
REDIS_SERVER_VARIABLE: Final = "FLEETTRACE_REDIS_SERVER"
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class WorkerTuning(EnvironmentSettings):
    """``FLEETTRACE_WORKER_<NAME>``: how the worker's group loops read, retry and
    report. None: not set, the default of ``WorkerSettings`` (itself the loop's,
    ``stream/loopstate.py``) applies; a command-line flag wins over a variable."""

    model_config = SettingsConfigDict(env_prefix=WORKER_PREFIX)

    consumer: Annotated[str, Field(max_length=200)] | None = None
    batch_records: PositiveCount | None = None
    block_ms: NonNegativeCount | None = None
    claim_idle_ms: PositiveCount | None = None
    max_deliveries: PositiveCount | None = None
    statement_timeout_ms: NonNegativeCount | None = None
    lock_timeout_ms: NonNegativeCount | None = None
    progress_limit_s: PositiveSeconds | None = None
    metrics_plans: Annotated[int, Field(ge=0, le=METRICS_PLANS_MAX)] | None = None
    group_max_lag: NonNegativeCount | None = None
    group_max_age_s: NonNegativeSeconds | None = None
    max_entry_bytes: PositiveCount | None = None

    def given(self) -> dict[str, object]:
        """The settings the environment sets."""
        return {name: value for name, value in self if value is not None}


class DashboardEnvironment(EnvironmentSettings):
    """``FLEETTRACE_DASHBOARD_TOKEN``: the bearer token the dashboard asks for (needed
    beyond loopback, docs/dashboard.md); a ``SecretStr``, never shown."""

    model_config = SettingsConfigDict(env_prefix=DASHBOARD_PREFIX)

    token: SecretStr | None = None

    def token_value(self) -> str | None:
        return None if self.token is None else self.token.get_secret_value()


class LocalEnvironment(EnvironmentSettings):
    """Where this host keeps the worker's files and programs: the runtime directory of
    ``fleettrace worker --check`` (``presence.py``) and the embedded servers of
    ``fleettrace demo`` (``embedded.py``)."""

    runtime_dir: str | None = Field(None, validation_alias=RUNTIME_DIR_VARIABLE)
    #: The runtime directory's default parent (the XDG Base Directory variable).
    xdg_runtime_dir: str | None = Field(None, validation_alias="XDG_RUNTIME_DIR")
    data_dir: str | None = Field(None, validation_alias=DATA_DIR_VARIABLE)
    redis_server: str | None = Field(None, validation_alias=REDIS_SERVER_VARIABLE)


def _local() -> LocalEnvironment:
    return LocalEnvironment.read()


def _tuning() -> WorkerTuning:
    return WorkerTuning.read()


def _dashboard() -> DashboardEnvironment:
    return DashboardEnvironment.read()


def _langsmith() -> LangSmithSettings:
    return LangSmithSettings.from_env(environment())


def _otlp() -> OtlpSettings:
    return OtlpSettings.from_env(environment())


class WorkerEnvironment(EnvironmentSettings):
    """What a worker-side command takes from its environment."""

    url_fields: ClassVar[tuple[str, ...]] = ("redis_url", "database_url")

    redis_url: str | None = Field(None, validation_alias=AliasChoices(*REDIS_URL_VARIABLES))
    database_url: str | None = Field(None, validation_alias=AliasChoices(*DATABASE_URL_VARIABLES))
    namespace: str | None = Field(None, validation_alias=NAMESPACE_VARIABLE)
    log_level: LogLevel = Field("INFO", validation_alias=LOG_LEVEL_VARIABLE)
    worker: WorkerTuning = Field(default_factory=_tuning)
    dashboard: DashboardEnvironment = Field(default_factory=_dashboard)
    local: LocalEnvironment = Field(default_factory=_local)
    langsmith: InstanceOf[LangSmithSettings] = Field(default_factory=_langsmith)
    otlp: InstanceOf[OtlpSettings] = Field(default_factory=_otlp)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


def read_environment(environ: Mapping[str, str] | None = None) -> WorkerEnvironment:
    """The worker side's settings from ``environ`` (default: the process environment)."""
    return WorkerEnvironment.read(environ)
