"""The installed ``fleettrace`` console script, run as a process against the
machine's PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.factories import STORED_CALL, llm_trace
from tests.servers import free_port
from tests.worker_helpers import _record, _store

# the console script ----------------------------------------------------------------


def _console_script() -> str:
    script = Path(sys.executable).with_name("fleettrace")
    assert script.exists(), "the fleettrace console script is not installed"
    return str(script)


@pytest.mark.slow
def test_the_console_script_runs_end_to_end(database_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("DATABASE_URL")}
    done = subprocess.run(
        [_console_script(), "migrate", "--database-url", database_url],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("migrated schema from version 0")

    trace = llm_trace(STORED_CALL)
    _store(database_url, [trace])
    done = subprocess.run(
        [_console_script(), "traces", "show", str(trace.trace_id), "--json"],
        capture_output=True, text=True, timeout=60, check=False,
        env={**env, "FLEETTRACE_DATABASE_URL": database_url},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert _record(json.loads(done.stdout)) == trace


def test_the_console_script_reports_a_refused_connection_without_a_traceback() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    done = subprocess.run(
        [_console_script(), "traces", "list", "--database-url", url],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("fleettrace traces: PostgreSQL at postgres@127.0.0.1:")
    assert len(done.stderr.strip().splitlines()) == 1
