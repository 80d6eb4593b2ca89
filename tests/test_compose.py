"""docker-compose.yml is for users and no Docker engine runs here, so it is checked by
reading it: against the Compose Specification's JSON schema, and against the project
(the commands, environment variables and build files it names must exist)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from fleettrace_worker.cli import build_parser
from fleettrace_worker.forward.langsmith.settings import LangSmithSettings

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
SCHEMA_FILE = REPO.parent / "shared" / "schemas" / "compose-spec.json"
SHELL_SEPARATORS = re.compile(r"&&|\|\||;")
PROJECT_VARIABLE = re.compile(r"\b((?:FLEETTRACE|LANGSMITH|LANGCHAIN)_[A-Z0-9_]+)\b")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def test_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    if not SCHEMA_FILE.exists():
        pytest.skip(
            f"{SCHEMA_FILE} is absent: the Compose schema lives in ../shared beside the repo"
        )
    schema = json.loads(SCHEMA_FILE.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []


def test_the_schema_check_catches_a_misspelled_key(compose: dict[str, Any]) -> None:
    if not SCHEMA_FILE.exists():
        pytest.skip(
            f"{SCHEMA_FILE} is absent: the Compose schema lives in ../shared beside the repo"
        )
    schema = json.loads(SCHEMA_FILE.read_text())
    broken = json.loads(json.dumps(compose))
    broken["services"]["redis"]["helthcheck"] = broken["services"]["redis"].pop("healthcheck")
    assert not jsonschema.Draft7Validator(schema).is_valid(broken)


def _shell_commands(script: str) -> list[list[str]]:
    commands = []
    for part in SHELL_SEPARATORS.split(script):
        argv = shlex.split(part)
        if argv and argv[0] == "exec":
            argv = argv[1:]
        if argv:
            commands.append(argv)
    return commands


def _as_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else list(value)


def _service_commands(service: dict[str, Any]) -> list[list[str]]:
    """Every command line a service runs: its entrypoint + command, and its health check."""
    entrypoint = _as_list(service.get("entrypoint"))
    command = _as_list(service.get("command"))
    commands = []
    if entrypoint[:2] == ["sh", "-c"]:
        commands += _shell_commands(" ".join(entrypoint[2:] + command))
    elif entrypoint or command:
        commands.append(entrypoint + command)
    test = service.get("healthcheck", {}).get("test", [])
    if test[:1] == ["CMD"]:
        commands.append(list(test[1:]))
    elif test[:1] == ["CMD-SHELL"]:
        commands += _shell_commands(test[1])
    return commands


def _fleettrace_commands(services: dict[str, dict[str, Any]]) -> list[list[str]]:
    return [
        argv
        for service in services.values()
        for argv in _service_commands(service)
        if argv[0] == "fleettrace"
    ]


def test_shell_commands_are_split_like_sh_would() -> None:
    assert _shell_commands("fleettrace migrate && exec fleettrace worker --http 0.0.0.0:1") == [
        ["fleettrace", "migrate"],
        ["fleettrace", "worker", "--http", "0.0.0.0:1"],
    ]


def test_every_fleettrace_command_it_runs_is_one_the_cli_accepts(
    services: dict[str, dict[str, Any]],
) -> None:
    commands = _fleettrace_commands(services)
    named = {argv[1] for argv in commands}
    assert {"migrate", "worker", "demo"} <= named
    parser = build_parser()
    for argv in commands:
        try:
            args = parser.parse_args(argv[1:])
        except SystemExit as exit_:  # argparse's way of refusing a command line
            pytest.fail(f"{shlex.join(argv)!r} is not a valid fleettrace command (exit {exit_})")
        assert args.command == argv[1]


def test_the_cli_check_refuses_an_unknown_option() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["worker", "--no-such-option"])


def _project_sources() -> str:
    return "\n".join(
        path.read_text()
        for root in (REPO / "src", REPO / "worker")
        for path in sorted(root.rglob("*.py"))
    )


def test_every_fleettrace_variable_it_sets_is_read_by_the_code() -> None:
    named = set(PROJECT_VARIABLE.findall(COMPOSE_FILE.read_text()))
    fleettrace = {name for name in named if name.startswith("FLEETTRACE_")}
    assert {"FLEETTRACE_REDIS_URL", "FLEETTRACE_DATABASE_URL", "FLEETTRACE_NAMESPACE"} <= fleettrace
    sources = _project_sources()
    unread = sorted(name for name in fleettrace if f'"{name}"' not in sources)
    assert unread == []


def _sample_value(name: str) -> str:
    if "TRACING" in name:
        return "true"
    if name.endswith("ENDPOINT"):
        return "https://langsmith.example.invalid"
    return "compose-value"


def test_every_langsmith_variable_it_sets_changes_the_settings() -> None:
    # The LangSmith settings compose their names from a prefix and a suffix (as the
    # langsmith package does), so reading is checked by effect, not by grep.
    named = sorted(
        name
        for name in set(PROJECT_VARIABLE.findall(COMPOSE_FILE.read_text()))
        if not name.startswith("FLEETTRACE_")
    )
    assert "LANGSMITH_API_KEY" in named
    default = LangSmithSettings.from_env({})
    assert LangSmithSettings.from_env({"LANGSMITH_NOT_A_SETTING": "x"}) == default
    ignored = [
        name for name in named if LangSmithSettings.from_env({name: _sample_value(name)}) == default
    ]
    assert ignored == []


def test_build_contexts_and_dockerfiles_exist(services: dict[str, dict[str, Any]]) -> None:
    builds = [service["build"] for service in services.values() if "build" in service]
    assert builds
    for build in builds:
        context = REPO / (build if isinstance(build, str) else build.get("context", "."))
        assert context.is_dir(), context
        dockerfile = context / (
            "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        )
        assert dockerfile.is_file(), dockerfile


def test_every_service_has_a_health_check(services: dict[str, dict[str, Any]]) -> None:
    assert {"redis", "postgres", "worker", "demo"} <= set(services)
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), name


def test_redis_keeps_what_it_accepted(services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    assert redis["image"].split(":")[1].startswith("7")
    command = _as_list(redis["command"])
    settings = dict(zip(command[1::2], command[2::2], strict=True))
    assert settings == {
        "--appendonly": "yes",
        "--appendfsync": "everysec",
        "--maxmemory-policy": "noeviction",
    }


def test_postgres_is_16(services: dict[str, dict[str, Any]]) -> None:
    assert services["postgres"]["image"].split(":")[1].startswith("16")


def test_the_worker_migrates_before_it_starts(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    commands = [argv[1] for argv in _service_commands(worker) if argv[0] == "fleettrace"]
    assert commands[:2] == ["migrate", "worker"]
    assert worker["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"


def test_the_worker_probe_finds_its_own_worker_without_a_fixed_name(
    services: dict[str, dict[str, Any]],
) -> None:
    worker = services["worker"]
    # The probe names no consumer: the worker leaves its name in its runtime directory.
    assert worker["healthcheck"]["test"] == ["CMD", "fleettrace", "worker", "--check"]
    # Nothing pins one consumer name, so replicas (--scale worker=2) get their own.
    commands = [argv for argv in _service_commands(worker) if argv[:2] == ["fleettrace", "worker"]]
    assert all("--consumer" not in argv for argv in commands)
    assert "FLEETTRACE_WORKER_CONSUMER" not in worker.get("environment", {})
    assert "FLEETTRACE_WORKER_CONSUMER" not in COMPOSE_FILE.read_text()
    dockerfile = (REPO / "worker" / "Dockerfile").read_text()
    assert 'CMD ["fleettrace", "worker", "--check"]' in dockerfile
    parsed = build_parser().parse_args(["worker", "--check"])
    assert parsed.check is True and parsed.consumer is None
