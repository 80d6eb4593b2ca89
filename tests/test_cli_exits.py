"""How the ``fleettrace`` command ends where a shell or an install cuts it short: a
reader that closed its end of the pipe (``fleettrace metrics | head -1``), and an
install without the ``worker`` extra. Each runs the real command in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from fleettrace.keys import Keys
from fleettrace.metrics import MetricKey
from fleettrace_worker.cli import EXIT_BROKEN_PIPE, EXIT_FAILURE, EXIT_OK, WORKER_EXTRA_MODULES
from fleettrace_worker.keys import PERSIST_GROUP
from fleettrace_worker.stream.deadletter import DeadLetter
from tests.emitting import make_emitter
from tests.worker_helpers import migrated, worker_env

ROOT = Path(__file__).resolve().parent.parent
EXTRA_MESSAGE = (
    "needs the worker extra ({module} is not installed): pip install 'fleettrace[worker]'"
)

#: Runs the CLI as an install without the worker extra sees it: importing any module
#: of the extra fails as it would if the package were absent.
WITHOUT_EXTRA = """
import importlib.abc, sys
BLOCKED = set(sys.argv[1].split(","))
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Absent())
from fleettrace_worker.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _env(redis_url: str, database_url: str, keys: Keys) -> dict[str, str]:
    return worker_env(redis_url, database_url, keys)


def _into_closed_pipe(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the command with stdout on a pipe whose reader has already gone away."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "fleettrace_worker.cli", *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
            timeout=120,
            check=False,
            cwd=ROOT,
        )
    finally:
        os.close(write_end)


def _add_dead_letter(client: redis.Redis, keys: Keys) -> None:
    letter = DeadLetter.for_entry(keys.traces, "1-0", {b"v": b"9"}, "c1", "unknown version")
    client.xadd(keys.dead_letters(PERSIST_GROUP), letter.to_fields())  # type: ignore[arg-type]


PIPED = [
    (("metrics",), EXIT_BROKEN_PIPE),
    (("metrics", "--json"), EXIT_BROKEN_PIPE),
    *(
        # Each is a command start (1-3 s here): one case above covers the fast loop.
        pytest.param(args, code, marks=pytest.mark.slow)
        for args, code in [
            (("--help",), EXIT_OK),  # argparse ignores a failed write of its help
            (("--version",), EXIT_OK),
            (("metrics", "--watch", "0.05"), EXIT_BROKEN_PIPE),
            (("dlq", "list"), EXIT_BROKEN_PIPE),
            (("dlq", "list", "--json"), EXIT_BROKEN_PIPE),
            (("dlq", "replay", "--all"), EXIT_BROKEN_PIPE),
            (("migrate",), EXIT_BROKEN_PIPE),
            (("migrate", "--check"), EXIT_BROKEN_PIPE),
            (("traces", "list"), EXIT_BROKEN_PIPE),
            (("traces", "cost"), EXIT_BROKEN_PIPE),
            (("prune", "--older-than", "1d"), EXIT_BROKEN_PIPE),
            (("worker", "--burst"), EXIT_OK),  # logs go to stderr; stdout is never written
        ]
    ),
]


@pytest.mark.parametrize(
    ("args", "code"), PIPED, ids=lambda v: " ".join(v) if isinstance(v, tuple) else None
)
def test_a_closed_reader_ends_the_command_quietly(
    args: tuple[str, ...],
    code: int,
    *,
    redis_url: str,
    redis_client: redis.Redis,
    keys: Keys,
    database_url: str,
) -> None:
    if args != ("migrate",):
        migrated(database_url)
    _add_dead_letter(redis_client, keys)
    result = _into_closed_pipe(*args, env=_env(redis_url, database_url, keys))
    assert result.stderr == ""
    assert result.returncode == code


@pytest.mark.slow
def test_a_closed_reader_ends_the_demo_quietly(
    redis_url: str, keys: Keys, database_url: str
) -> None:
    result = _into_closed_pipe(
        "demo",
        "--agents",
        "1",
        "--plans",
        "1",
        "--malformed",
        "0",
        env=_env(redis_url, database_url, keys),
    )
    assert result.stderr == ""
    assert result.returncode == EXIT_BROKEN_PIPE


def _without_extra(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTRA, ",".join(sorted(WORKER_EXTRA_MODULES)), *args],
        capture_output=True,
        env=env,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )


NEEDS_EXTRA = [
    (("demo",), "psycopg"),
    (("traces", "list"), "psycopg_pool"),
    *(
        pytest.param(args, module, marks=pytest.mark.slow)
        for args, module in [
            (("demo", "--agents", "2", "--help"), "psycopg"),
            (("migrate",), "psycopg"),
            (("migrate", "--check"), "psycopg"),
            (("prune", "--older-than", "30d"), "psycopg"),
            (("traces", "show", "0b6f0c1e-8a4e-4c1d-9f4e-1a2b3c4d5e6f"), "psycopg_pool"),
            (("worker",), "psycopg_pool"),
            (("worker", "--check"), "psycopg_pool"),
            (("worker", "--dashboard", "--http", "127.0.0.1:0"), "psycopg_pool"),
            (("dashboard",), "psycopg"),
        ]
    ),
]


@pytest.mark.parametrize(
    ("args", "module"), NEEDS_EXTRA, ids=lambda v: " ".join(v) if isinstance(v, tuple) else v
)
def test_without_the_worker_extra_a_command_that_needs_it_says_so_in_one_line(
    args: tuple[str, ...], module: str
) -> None:
    result = _without_extra(*args)
    assert result.stderr == f"fleettrace {args[0]}: {EXTRA_MESSAGE.format(module=module)}\n"
    assert result.stdout == ""
    assert result.returncode == EXIT_FAILURE


def test_without_the_worker_extra_help_lists_every_command_and_the_extra() -> None:
    result = _without_extra("--help")
    assert result.returncode == EXIT_OK, result.stderr
    # argparse puts the help of a long command name ("dashboard") on the next line.
    lines = result.stdout.replace("dashboard\n", "dashboard ").splitlines()
    for command in ("demo", "migrate", "prune", "traces", "worker", "dashboard"):
        [line] = [line for line in lines if line.split()[:1] == [command]]
        assert line.endswith("(needs the worker extra: pip install 'fleettrace[worker]')")
    [metrics] = [line for line in lines if line.split()[:1] == ["metrics"]]
    assert metrics.split(maxsplit=1)[1] == "print the live counters"
    assert _without_extra("--version").stdout.startswith("fleettrace ")


def test_without_the_worker_extra_metrics_and_dlq_work(
    redis_url: str, redis_client: redis.Redis, keys: Keys
) -> None:
    emitter = make_emitter(redis_url, keys)
    emitter.observe(MetricKey.TOOL_INVOCATION_DURATION_MS, 12.0, {"tool": "search"})
    assert emitter.close(30)
    env = worker_env(redis_url, "postgresql://unused@127.0.0.1:1/none", keys)
    metrics = _without_extra("metrics", "--json", env=env)
    assert metrics.returncode == EXIT_OK, metrics.stderr
    assert '"key": "tool.invocation_duration_ms", "type": "histogram"' in metrics.stdout
    _add_dead_letter(redis_client, keys)
    letters = _without_extra("dlq", "list", env=env)
    assert letters.returncode == EXIT_OK, letters.stderr
    assert "unknown version" in letters.stdout
    assert letters.stdout.splitlines()[-1] == (
        f"1 dead letter in group persist of namespace {keys.namespace!r}"
    )


@pytest.mark.slow
def test_a_real_install_without_the_worker_extra(
    tmp_path: Path, redis_url: str, keys: Keys
) -> None:
    """``pip install fleettrace`` into a fresh venv (about 25 s): the installed console
    script says what to install for the worker commands and runs the others."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    env = {**worker_env(redis_url, "postgresql://unused@127.0.0.1:1/none", keys)}
    script = str(venv / "bin" / "fleettrace")
    extras = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import psycopg"], capture_output=True, check=False
    )
    assert extras.returncode == 1  # the base install really lacks the extra
    demo = subprocess.run([script, "demo"], capture_output=True, text=True, env=env, check=False)
    assert demo.stderr == f"fleettrace demo: {EXTRA_MESSAGE.format(module='psycopg')}\n"
    assert demo.returncode == EXIT_FAILURE
    metrics = subprocess.run(
        [script, "metrics", "--json"], capture_output=True, text=True, env=env, check=False
    )
    assert (metrics.returncode, metrics.stderr) == (EXIT_OK, "")
    assert json.loads(metrics.stdout) == {
        "items": [],
        "next_cursor": None,
        "namespace": keys.namespace,
    }
