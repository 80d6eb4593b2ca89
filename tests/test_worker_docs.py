"""docs/worker.md and the README say what the worker's code does: the variables that
exist, and how each PostgreSQL error is sorted."""

from __future__ import annotations

import re
from pathlib import Path

from fleettrace_worker.context import ENV_PREFIX
from fleettrace_worker.settings import WorkerTuning
from fleettrace_worker.store.database import SQLSTATE_VERDICTS

ROOT = Path(__file__).resolve().parent.parent
WORKER_DOC = (ROOT / "docs" / "worker.md").read_text()
README = (ROOT / "README.md").read_text()


def test_every_worker_variable_is_documented_and_every_documented_one_exists() -> None:
    in_code = {WorkerTuning.variable(name) for name in WorkerTuning.model_fields}
    documented = set(re.findall(r"FLEETTRACE_WORKER_[A-Z_]*[A-Z]", WORKER_DOC))
    assert documented == in_code
    readme_names = re.search(r"\| `FLEETTRACE_WORKER_\*` \|([^\n]*)", README)
    assert readme_names is not None
    listed = {ENV_PREFIX + n for n in re.findall(r"`([A-Z_]+)`", readme_names.group(1))}
    assert listed == in_code


def test_every_sqlstate_of_the_verdict_table_is_in_the_docs() -> None:
    section = WORKER_DOC.split("### What a PostgreSQL error means", 1)[1].split("\n## ", 1)[0]
    for state in SQLSTATE_VERDICTS:
        shown = f"class {state}" if len(state) == 2 else state
        assert shown in section or (state.startswith("57P") and "57P01-57P03" in section), state
