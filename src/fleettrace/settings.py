"""Every setting the agent side takes from the environment, read in this one module.

The process environment is reached here only (:func:`environment`): library code
takes URLs and settings as arguments, and ``configure()``, the default emitter,
``Keys()`` and the price file take their defaults from :class:`AgentSettings`. A bad
value is one :class:`~fleettrace.errors.ConfigurationError` line naming the variable
(``FLEETTRACE_EMITTER_FLUSH_INTERVAL_S must be a number, got 'soon'``), never a
traceback, and a secret (a URL's password) never appears in a repr or a message.

Variables (docs/configuration.md lists them all):

- ``FLEETTRACE_REDIS_URL``, else ``REDIS_URL``: where the emitter sends.
- ``FLEETTRACE_NAMESPACE``: the fleet's namespace; ``FLEETTRACE_PRODUCER``: the
  producer identity; ``FLEETTRACE_PRICES``: a file of custom prices.
- ``FLEETTRACE_SHARDS``, ``FLEETTRACE_SHARD``: how many shards the namespace has and
  the one this process writes to (:mod:`fleettrace.shards`).
- ``FLEETTRACE_EMITTER_<KNOB>``: the emitter's tuning (:class:`EmitterTuning`).

The worker's settings (``fleettrace_worker.settings``) are built on the same base,
:class:`EnvironmentSettings`, so both sides refuse bad values in the same words.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Annotated, Any, ClassVar, Final, Literal, Self

from pydantic import AliasChoices, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from fleettrace.environment import (
    _ENVIRON,
    EMITTER_PREFIX,
    NAMESPACE_VARIABLE,
    PRICES_VARIABLE,
    PRODUCER_VARIABLE,
    REDIS_CLUSTER_VARIABLE,
    REDIS_URL_VARIABLES,
    SHARD_VARIABLE,
    SHARDS_VARIABLE,
    WAIT_REPLICAS_VARIABLE,
    WAIT_TIMEOUT_VARIABLE,
    environment,
    redact_url,
)
from fleettrace.errors import ConfigurationError

#: A number of seconds (or of anything) above zero, finite.
PositiveSeconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
PositiveCount = Annotated[int, Field(gt=0)]
NonNegativeCount = Annotated[int, Field(ge=0)]
NonNegativeSeconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]

#: What a value must be, by pydantic error type (the rest say pydantic's own words).
_WANTED: Final = {
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "int_type": "a whole number",
    "float_parsing": "a number",
    "float_type": "a number",
    "finite_number": "a finite number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "greater_than": "above {gt}",
    "greater_than_equal": "{ge} or more",
    "less_than": "below {lt}",
    "less_than_equal": "at most {le}",
    "literal_error": "one of {expected}",
    "url_parsing": "a URL",
    "url_scheme": "a URL starting with {expected_schemes}",
    "string_too_long": "at most {max_length} characters",
    "string_too_short": "at least {min_length} characters",
}
#: Fields whose values are never shown in a message.
_SECRET_WORDS: Final = ("password", "secret", "token", "key", "headers")


class _MappingSource(EnvSettingsSource):
    """pydantic-settings' environment source over :func:`environment`, so a test or
    the CLI can hand in a mapping without touching the process environment."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # A blank variable counts as unset, so an alias after it still applies.
        return {
            (name if self.case_sensitive else name.lower()): value
            for name, value in environment().items()
            if value.strip()
        }


class EnvironmentSettings(BaseSettings):
    """Base of the settings read from the environment on both sides.

    Values are stripped and a blank one counts as unset, as the variables always
    have; a bad one is a one-line ``ConfigurationError`` naming its variable.
    """

    model_config = SettingsConfigDict(
        extra="ignore", frozen=True, case_sensitive=False, env_ignore_empty=True
    )
    #: Fields holding a URL that may carry a password: shown redacted in repr and str.
    url_fields: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _MappingSource(settings_cls))

    @model_validator(mode="before")
    @classmethod
    def _blank_is_unset(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {
                name: value.strip() if isinstance(value, str) else value
                for name, value in data.items()
                if not (isinstance(value, str) and not value.strip())
            }
        return data

    @classmethod
    def read(cls, environ: Mapping[str, str] | None = None) -> Self:
        """The settings from ``environ`` (default: the process environment)."""
        token = _ENVIRON.set(environ) if environ is not None else None
        try:
            return cls()
        except ValidationError as error:
            raise ConfigurationError(one_line(cls, error)) from None
        finally:
            if token is not None:
                _ENVIRON.reset(token)

    @classmethod
    def variable(cls, name: str) -> str:
        """The (first) environment variable that sets field ``name``."""
        info = cls.model_fields[name]
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            return str(alias.choices[0])
        if isinstance(alias, str):
            return alias
        return f"{cls.model_config.get('env_prefix', '')}{name}".upper()

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            hidden = name in self.url_fields and isinstance(value, str)
            yield name, redact_url(value) if hidden else value


def _field_of(cls: type[EnvironmentSettings], loc: object) -> tuple[str, FieldInfo] | None:
    key = str(loc).lower()
    for name, info in cls.model_fields.items():
        alias = info.validation_alias
        names = {name.lower(), f"{cls.model_config.get('env_prefix', '')}{name}".lower()}
        if isinstance(alias, AliasChoices):
            names |= {str(choice).lower() for choice in alias.choices}
        elif isinstance(alias, str):
            names.add(alias.lower())
        if key in names:
            return name, info
    return None


def one_line(cls: type[EnvironmentSettings], error: ValidationError) -> str:
    """The first problem of ``error`` as ``VARIABLE must be ..., got '...'``."""
    first = error.errors()[0]
    found = _field_of(cls, first["loc"][0]) if first["loc"] else None
    variable = cls.variable(found[0]) if found else ".".join(map(str, first["loc"]))
    secret = found is not None and any(word in found[0] for word in _SECRET_WORDS)
    shown = "(hidden)" if secret else repr(first.get("input"))
    wanted = _WANTED.get(first["type"])
    if wanted is None:
        message = str(first["msg"]).removeprefix("Value error, ")
        return f"{variable}: {message}" if secret else f"{variable}: {message}, got {shown}"
    return f"{variable} must be {wanted.format(**first.get('ctx', {}))}, got {shown}"


class EmitterTuning(EnvironmentSettings):
    """The emitter's knobs from ``FLEETTRACE_EMITTER_<NAME>`` variables; None: not set,
    the default of :class:`~fleettrace.emitter_settings.EmitterSettings` applies (the
    defaults live there only)."""

    model_config = SettingsConfigDict(env_prefix=EMITTER_PREFIX)

    max_batch_records: PositiveCount | None = None
    flush_interval_s: PositiveSeconds | None = None
    max_buffer_records: PositiveCount | None = None
    max_buffer_bytes: PositiveCount | None = None
    overflow: Literal["drop_oldest", "block"] | None = None
    block_timeout_s: PositiveSeconds | None = None
    retry_initial_s: PositiveSeconds | None = None
    retry_max_s: PositiveSeconds | None = None
    socket_timeout_s: PositiveSeconds | None = None
    exit_timeout_s: PositiveSeconds | None = None
    plan_ttl_s: PositiveCount | None = None

    def given(self) -> dict[str, Any]:
        """The knobs the environment sets."""
        return {name: value for name, value in self if value is not None}


def _emitter_tuning() -> EmitterTuning:
    return EmitterTuning.read()


class AgentSettings(EnvironmentSettings):
    """What an agent process takes from its environment (all optional: the emitter
    and ``Keys()`` have defaults)."""

    url_fields: ClassVar[tuple[str, ...]] = ("redis_url",)

    redis_url: str | None = Field(None, validation_alias=AliasChoices(*REDIS_URL_VARIABLES))
    #: The Redis Cluster settings, as text: parsed by :mod:`fleettrace.cluster`.
    redis_cluster: str | None = Field(None, validation_alias=REDIS_CLUSTER_VARIABLE)
    wait_replicas: str | None = Field(None, validation_alias=WAIT_REPLICAS_VARIABLE)
    wait_timeout_ms: str | None = Field(None, validation_alias=WAIT_TIMEOUT_VARIABLE)
    namespace: str | None = Field(None, validation_alias=NAMESPACE_VARIABLE)
    producer: str | None = Field(None, validation_alias=PRODUCER_VARIABLE)
    prices_file: str | None = Field(None, validation_alias=PRICES_VARIABLE)
    #: Sharded namespaces (docs/scaling.md), as text: parsed by :mod:`fleettrace.shards`.
    shards: str | None = Field(None, validation_alias=SHARDS_VARIABLE)
    shard: str | None = Field(None, validation_alias=SHARD_VARIABLE)
    emitter: EmitterTuning = Field(default_factory=_emitter_tuning)
