"""``fleettrace prune`` run for real against the machine's PostgreSQL: what it
prints, what it removes, and its exit codes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from fleettrace_worker.cli import main
from tests.factories import STORED_CALL, llm_trace
from tests.worker_helpers import _one_clean_line, _store, run

# prune -----------------------------------------------------------------------------


def test_prune_removes_old_rows_and_says_how_many(
    capsys: pytest.CaptureFixture[str], migrated: str
) -> None:
    now = datetime.now(UTC)
    old = [llm_trace(STORED_CALL, started_at=now - timedelta(days=31 + i)) for i in range(4)]
    recent = [llm_trace(STORED_CALL, started_at=now - timedelta(days=29)), llm_trace(STORED_CALL)]
    _store(migrated, old + recent)

    code, out, _ = run(
        capsys, "prune", "--older-than", "30d", "--dry-run", "--database-url", migrated
    )
    assert code == 0
    assert out.startswith("would remove 4 traces and 0 metric samples older than ")

    code, out, _ = run(
        capsys, "prune", "--older-than", "30d", "--batch-rows", "3", "--database-url", migrated
    )
    assert code == 0
    assert out.startswith("removed 4 traces and 0 metric samples older than ")
    with psycopg.connect(migrated) as conn:
        left = {row[0] for row in conn.execute("SELECT trace_id FROM llm_traces")}
    assert left == {t.trace_id for t in recent}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--older-than", "30x"], "'30x' is not a duration: use a whole number and one of s"),
        (["--older-than", "1.5d"], "'1.5d' is not a duration"),
    ],
)
def test_prune_refuses_a_bad_duration(
    capsys: pytest.CaptureFixture[str], migrated: str, argv: list[str], message: str
) -> None:
    code, out, err = run(capsys, "prune", *argv, "--database-url", migrated)
    assert code == 2 and out == ""
    assert message in _one_clean_line(err)


@pytest.mark.parametrize("value", ["0", "many"])
def test_prune_refuses_a_bad_batch_size(capsys: pytest.CaptureFixture[str], value: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["prune", "--older-than", "1d", "--batch-rows", value])
    assert exit_.value.code == 2
    assert "--batch-rows" in capsys.readouterr().err
