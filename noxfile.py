"""Checks of the project. Sessions run in the current environment (the venv the
README's test command makes), so one install serves them all.

    nox                      lint, typecheck, tests, behave, robot, coverage_report
    nox -s bench             ASV benchmarks, quick, against the installed package

The suites find their Redis and PostgreSQL themselves (tests/servers.py ``SuiteServers``):
the machine's on 127.0.0.1:6379 and :5432, else servers of their own;
``FLEETTRACE_TEST_SERVERS=embedded nox`` always uses servers of their own.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nox

nox.options.default_venv_backend = "none"
nox.options.sessions = ["lint", "typecheck", "tests", "behave", "robot", "coverage_report"]
nox.options.error_on_missing_interpreters = True

ROOT = Path(__file__).parent
PY = sys.executable
COVERAGE_ENV = {
    "COVERAGE_PROCESS_START": str(ROOT / "pyproject.toml"),
    "COVERAGE_RCFILE": str(ROOT / "pyproject.toml"),
}


@nox.session
def lint(session: nox.Session) -> None:
    session.run(PY, "-m", "ruff", "check", ".")
    session.run(PY, "-m", "ruff", "format", "--check", "src", "worker")
    # The import contracts of pyproject.toml ([tool.importlinter]; docs/architecture.md).
    session.run(
        PY,
        "-c",
        "import sys; from importlinter.cli import lint_imports_command; "
        "sys.exit(lint_imports_command())",
    )


@nox.session
def typecheck(session: nox.Session) -> None:
    session.run(PY, "-m", "mypy", "src", "worker")


def _erase_coverage(session: nox.Session) -> None:
    for stale in ROOT.glob(".coverage*"):
        stale.unlink()


@nox.session
def tests(session: nox.Session) -> None:
    _erase_coverage(session)
    session.run(PY, "-m", "coverage", "run", "-m", "pytest", *session.posargs, env=COVERAGE_ENV)


@nox.session
def behave(session: nox.Session) -> None:
    session.run(
        PY,
        "-m",
        "coverage",
        "run",
        "-m",
        "behave",
        "features",
        "--no-capture",
        "--format",
        "progress",
        env=COVERAGE_ENV,
    )


@nox.session
def robot(session: nox.Session) -> None:
    session.run(
        PY,
        "-m",
        "coverage",
        "run",
        "-m",
        "robot",
        "--outputdir",
        "robot/output",
        "robot",
        env=COVERAGE_ENV,
    )


@nox.session
def coverage_report(session: nox.Session) -> None:
    session.run(PY, "-m", "coverage", "combine", success_codes=[0, 1])
    session.run(PY, "-m", "coverage", "report", "--fail-under=97")


@nox.session
def bench(session: nox.Session) -> None:
    session.run(PY, "-m", "asv", "machine", "--yes")
    session.run(
        PY,
        "-m",
        "asv",
        "run",
        "--python=same",
        "--quick",
        "--show-stderr",
        "--set-commit-hash",
        os.popen("git rev-parse HEAD").read().strip(),
    )
