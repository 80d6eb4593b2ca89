"""docs/configuration.md lists every variable the settings modules read, and only
those: read from the settings classes and the variable constants, not by hand."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import AliasChoices

from fleettrace.settings import AgentSettings, EmitterTuning, EnvironmentSettings
from fleettrace_worker.forward.langsmith import settings as langsmith_settings
from fleettrace_worker.forward.otlp import settings as otlp_settings
from fleettrace_worker.settings import (
    DashboardEnvironment,
    LocalEnvironment,
    WorkerEnvironment,
    WorkerTuning,
)

PAGE = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
#: Read by the parsers through a prefix or a signal's name rather than a constant.
SPELLED_OUT = {
    "LANGSMITH_TRACING_V2",
    "LANGCHAIN_TRACING_V2",
    "LANGSMITH_TRACING",
    "LANGCHAIN_TRACING",
    "LANGSMITH_ENDPOINT",
    "LANGSMITH_API_KEY",
    "LANGSMITH_PROJECT",
    "OTEL_SDK_DISABLED",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
}


def _variables(cls: type[EnvironmentSettings]) -> set[str]:
    names = set()
    for name, info in cls.model_fields.items():
        if isinstance(info.validation_alias, AliasChoices):
            names |= {str(choice) for choice in info.validation_alias.choices}
        elif name not in ("worker", "dashboard", "local", "langsmith", "otlp", "emitter"):
            names.add(cls.variable(name))
    return names


def _constants() -> set[str]:
    found = set()
    for module in (langsmith_settings, otlp_settings):
        for name, value in vars(module).items():
            if name.endswith("_VARIABLE") and isinstance(value, str):
                found.add(value)
    return found


def test_every_variable_read_is_on_the_page_and_every_one_there_is_read() -> None:
    in_code = set().union(
        *(
            _variables(cls)
            for cls in (
                AgentSettings,
                EmitterTuning,
                WorkerEnvironment,
                WorkerTuning,
                DashboardEnvironment,
                LocalEnvironment,
            )
        ),
        _constants(),
        SPELLED_OUT,
    )
    named = r"`((?:FLEETTRACE|OTEL|LANGSMITH|LANGCHAIN)_[A-Z0-9_]*[A-Z0-9])`"
    documented = set(re.findall(named, PAGE))
    others = {"REDIS_URL", "DATABASE_URL", "XDG_RUNTIME_DIR"}
    documented |= others & set(re.findall(r"`([A-Z_]+)`", PAGE))
    assert in_code - documented == set()
    assert documented - in_code - {"FLEETTRACE_TEST_SERVERS"} == {
        "LANGCHAIN_ENDPOINT",
        "LANGCHAIN_API_KEY",
        "LANGCHAIN_PROJECT",
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
    }
