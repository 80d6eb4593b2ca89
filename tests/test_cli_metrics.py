"""``fleettrace metrics`` run for real against the machine's Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleettrace import LLMTrace, MetricKey
from fleettrace.keys import Keys
from fleettrace_worker.cli import main
from tests.emitting import make_emitter
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def recorded(redis_url: str, keys: Keys) -> Keys:
    emitter = make_emitter(redis_url, keys)
    for value in (2.0, 4.0, 30.0, 70.0):
        emitter.observe(MetricKey.TOOL_INVOCATION_DURATION_MS, value, {"tool": "web,search"})
    emitter.observe(MetricKey.CONTEXT_TOKENS_USED, 321)
    emitter.record(LLMTrace(provider="openai", model="gpt-4o", prompt_tokens=1000, plan_id="p1"))
    assert emitter.close()
    return keys


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["metrics", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_table(recorded: Keys, redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--redis-url", redis_url, "--namespace", recorded.namespace)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["key", "labels", "count", "sum/value", "p50", "p95", "p99"]
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in lines[1:]}
    assert rows[("plan.cost_usd", "plan=p1")] == ["1", "0.0025", "-", "-", "-"]
    assert rows[("context.tokens_used", "-")] == ["1", "321", "-", "-", "-"]
    assert rows[("tool.invocation_duration_ms", "tool=web,search")] == [
        "4",
        "106",
        "5",
        "90",
        "98",
    ]
    assert rows[("actor.token_usage", "provider=openai,model=gpt-4o,token_type=prompt")][:2] == [
        "1",
        "1000",
    ]


def test_json_and_key_filter(
    recorded: Keys,
    redis_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLEETTRACE_REDIS_URL", redis_url)
    monkeypatch.setenv("FLEETTRACE_NAMESPACE", recorded.namespace)
    code, out, _ = run(capsys, "--json", "--key", "tool.invocation_duration_ms")
    assert code == 0
    [series] = json.loads(out)
    assert series["key"] == "tool.invocation_duration_ms"
    assert series["type"] == "histogram"
    assert series["unit"] == "ms"
    assert series["labels"] == {"tool": "web,search"}
    assert (series["count"], series["sum"], series["value"]) == (4, 106.0, None)
    assert series["buckets"][-1] == {"le": "+Inf", "count": 0}
    counts = {b["le"]: b["count"] for b in series["buckets"]}
    assert (counts[2.5], counts[5.0], counts[10.0], counts[50.0], counts[100.0]) == (1, 1, 0, 1, 1)
    # ranks 2, 3.8 and 3.96 of 4, interpolated in (2.5, 5] and (50, 100]
    assert (series["p50"], series["p95"], series["p99"]) == pytest.approx((5.0, 90.0, 98.0))


def test_empty_namespace(keys: Keys, redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--redis-url", redis_url, "--namespace", keys.namespace)
    assert (code, out) == (0, "no live counters yet\n")
    code, out, _ = run(capsys, "--redis-url", redis_url, "--namespace", keys.namespace, "--json")
    assert (code, out) == (0, "[]\n")


def test_unreachable_redis_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--redis-url", f"redis://127.0.0.1:{free_port()}/0")
    assert code == 1
    assert out == ""
    assert err.startswith("fleettrace metrics: reading the live counters: ")
    assert "Connection refused" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--watch", "0"], "must be a positive number of seconds"),
        (["--watch", "soon"], "not a number of seconds"),
        (["--key", "nope"], "invalid choice: 'nope'"),
    ],
)
def test_bad_arguments_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["metrics", *argv])
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_namespace_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--namespace", "a b")
    assert code == 2
    assert "namespace 'a b'" in err


@pytest.mark.slow
def test_watch_refreshes_until_interrupted(recorded: Keys, redis_url: str) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fleettrace_worker.cli",
            "metrics",
            "--redis-url",
            redis_url,
            "--namespace",
            recorded.namespace,
            "--watch",
            "0.05",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    headers = 0
    deadline = time.monotonic() + 30
    while headers < 2 and time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith("key "):
            headers += 1
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert headers == 2
    assert process.returncode == 130
    assert "Traceback" not in err


def test_watch_on_a_terminal_clears_the_screen_between_tables(
    recorded: Keys,
    redis_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr("fleettrace_worker.cli.metrics.time.sleep", sleep)
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    code, out, _ = run(
        capsys, "--redis-url", redis_url, "--namespace", recorded.namespace, "--watch"
    )
    assert code == 130
    assert sleeps == [2.0, 2.0]
    assert out.count("\x1b[H\x1b[2J") == 2
    assert out.count("tool.invocation_duration_ms") == 2
