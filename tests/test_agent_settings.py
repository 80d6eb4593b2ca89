"""The agent side's settings from the environment (fleettrace.settings): every
variable read in one place, a bad value one line naming its variable, a password
never in a repr. Pure: no server."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from fleettrace.emitter_settings import EmitterSettings
from fleettrace.errors import ConfigurationError
from fleettrace.settings import AgentSettings, EmitterTuning

PASSWORD = "pw-agent-8c1d"


def test_the_emitter_tuning_comes_from_its_variables_and_given_values_win(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in {
        "FLEETTRACE_EMITTER_MAX_BATCH_RECORDS": "250",
        "FLEETTRACE_EMITTER_FLUSH_INTERVAL_S": "0.02",
        "FLEETTRACE_EMITTER_MAX_BUFFER_RECORDS": " 5000 ",
        "FLEETTRACE_EMITTER_OVERFLOW": "block",
        "FLEETTRACE_EMITTER_BLOCK_TIMEOUT_S": "0.3",
        "FLEETTRACE_EMITTER_RETRY_INITIAL_S": "0.1",
        "FLEETTRACE_EMITTER_RETRY_MAX_S": "2",
        "FLEETTRACE_EMITTER_SOCKET_TIMEOUT_S": "3",
        "FLEETTRACE_EMITTER_EXIT_TIMEOUT_S": "4",
        "FLEETTRACE_EMITTER_PLAN_TTL_S": "60",
        "FLEETTRACE_REDIS_URL": "redis://127.0.0.1:6379/3",
        "FLEETTRACE_NAMESPACE": "fleet-t",
        "FLEETTRACE_PRODUCER": "agent-3",
    }.items():
        monkeypatch.setenv(name, value)
    settings = EmitterSettings.from_env(retry_max_s=1.5, redis_url=None)
    assert settings.max_batch_records == 250
    assert settings.flush_interval_s == 0.02
    assert settings.max_buffer_records == 5000
    assert settings.overflow == "block"
    assert settings.block_timeout_s == 0.3
    assert settings.retry_initial_s == 0.1
    assert settings.retry_max_s == 1.5  # given wins over FLEETTRACE_EMITTER_RETRY_MAX_S
    assert settings.socket_timeout_s == 3.0
    assert settings.exit_timeout_s == 4.0
    assert settings.plan_ttl_s == 60
    assert settings.redis_url == "redis://127.0.0.1:6379/3"
    assert settings.namespace == "fleet-t"
    assert settings.producer == "agent-3"


def test_without_variables_the_emitter_defaults_stay_the_only_defaults() -> None:
    tuning = EmitterTuning.read({})
    assert tuning.given() == {}
    assert AgentSettings.read({"FLEETTRACE_EMITTER_OVERFLOW": "  "}).emitter.overflow is None


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "FLEETTRACE_EMITTER_FLUSH_INTERVAL_S",
            "soon",
            "FLEETTRACE_EMITTER_FLUSH_INTERVAL_S must be a number, got 'soon'",
        ),
        (
            "FLEETTRACE_EMITTER_MAX_BATCH_RECORDS",
            "-5",
            "FLEETTRACE_EMITTER_MAX_BATCH_RECORDS must be above 0, got '-5'",
        ),
        (
            "FLEETTRACE_EMITTER_MAX_BUFFER_RECORDS",
            "1e3",
            "FLEETTRACE_EMITTER_MAX_BUFFER_RECORDS must be a whole number, got '1e3'",
        ),
        (
            "FLEETTRACE_EMITTER_RETRY_MAX_S",
            "inf",
            "FLEETTRACE_EMITTER_RETRY_MAX_S must be a finite number, got 'inf'",
        ),
        (
            "FLEETTRACE_EMITTER_OVERFLOW",
            "wait",
            "FLEETTRACE_EMITTER_OVERFLOW must be one of 'drop_oldest' or 'block', got 'wait'",
        ),
    ],
)
def test_a_bad_value_is_one_line_naming_its_variable(
    variable: str, value: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        AgentSettings.read({variable: value})
    assert str(caught.value) == message
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as again:
        EmitterSettings.from_env()
    assert str(again.value) == message
    assert "\n" not in message


def test_the_redis_password_is_in_no_repr_or_str() -> None:
    url = f"redis://agent:{PASSWORD}@127.0.0.1:6379/0?password={PASSWORD}"
    settings = AgentSettings.read({"REDIS_URL": url})
    assert settings.redis_url == url
    for text in (repr(settings), str(settings)):
        assert PASSWORD not in text
        assert "agent:***@127.0.0.1" in text


def test_fleettraces_own_url_variable_wins_and_a_blank_one_counts_as_unset() -> None:
    both = {"FLEETTRACE_REDIS_URL": "redis://a:6379/0", "REDIS_URL": "redis://b:6379/0"}
    assert AgentSettings.read(both).redis_url == "redis://a:6379/0"
    blank = {"FLEETTRACE_REDIS_URL": "  ", "REDIS_URL": "redis://b:6379/0"}
    assert AgentSettings.read(blank).redis_url == "redis://b:6379/0"


def test_every_emitter_knob_has_its_variable() -> None:
    """A knob added to EmitterSettings without a FLEETTRACE_EMITTER_* variable fails
    here (the connection, cluster, shard and identity fields have variables of their own)."""
    own = {
        "redis_url",
        "namespace",
        "producer",
        "prices_file",
        "redis_cluster",
        "wait_replicas",
        "wait_timeout_ms",
        "shards",
        "shard",
    }
    knobs = {f.name for f in dataclasses.fields(EmitterSettings)} - own
    assert knobs == set(EmitterTuning.model_fields)


_HOOKS_WITH_A_BAD_SETTING = """
import json, logging, sys
import fleettrace
from fleettrace.emitter import hook_emitter
from fleettrace.errors import ConfigurationError
logging.basicConfig(level=logging.ERROR, stream=sys.stderr, format="%(message)s")
with fleettrace.plan("p-bad-setting"):
    with fleettrace.actor("planner") as planner:
        with planner.llm("openai", "gpt-4o") as call:
            call.update(prompt_tokens=10, completion_tokens=5)
    with fleettrace.tool("search"):
        pass
try:
    fleettrace.get_emitter()
    raised = None
except ConfigurationError as error:
    raised = str(error)
print(json.dumps({"raised": raised, "unrecorded": hook_emitter().unrecorded}))
"""


def test_a_bad_setting_never_raises_from_a_hook_but_is_said_once_and_counted() -> None:
    """Hooks run inside agent code: a bad variable makes get_emitter() and configure()
    raise, but a hook records nothing, counts what it dropped and logs the line once."""
    env = {**os.environ, "FLEETTRACE_EMITTER_FLUSH_INTERVAL_S": "soon"}
    done = subprocess.run(
        [sys.executable, "-c", _HOOKS_WITH_A_BAD_SETTING],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["raised"] == "FLEETTRACE_EMITTER_FLUSH_INTERVAL_S must be a number, got 'soon'"
    # The LLM call, the actor's and the tool's duration samples, the plan record.
    assert report["unrecorded"] >= 3
    said = [
        line for line in done.stderr.splitlines() if "FLEETTRACE_EMITTER_FLUSH_INTERVAL_S" in line
    ]
    assert said == [
        "fleettrace records nothing until this is fixed: "
        "FLEETTRACE_EMITTER_FLUSH_INTERVAL_S must be a number, got 'soon'"
    ]
    assert "Traceback" not in done.stderr
