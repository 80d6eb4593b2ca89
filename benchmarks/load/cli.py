"""``python -m benchmarks.load``: run the sections, print the table (or ``--json``).

Every run uses fresh namespaces on the Redis and fresh databases on the PostgreSQL it
is given (loopback by default) and removes them at the end, also when interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Final

from benchmarks.load import (
    capacity,
    drain,
    drivers,
    freshness,
    hook_costs,
    hook_report,
    hotpath,
    imports,
    live_reads,
    machine,
    memory,
    producer,
    report,
    shards,
    worker,
)
from benchmarks.load.context import DEFAULT_PG_ADMIN_URL, DEFAULT_REDIS_URL, FULL, QUICK, RunContext

SECTIONS: Final[dict[str, Callable[[RunContext], dict[str, Any]]]] = {
    "imports": imports.run,
    "live_reads": live_reads.run,
    "hotpath": hotpath.run,
    "hooks": hook_costs.run,
    "producer": producer.run,
    "worker": worker.run,
    "drain": drain.run,
    "freshness": freshness.run,
    "capacity": capacity.run,
    "shards": shards.run,
}
ALL_SECTIONS: Final = (*SECTIONS, "memory")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.load",
        description="Drive fleettrace and a baseline pipeline on this machine's Redis and "
        "PostgreSQL and print the figures against the performance targets.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--output", metavar="FILE", help="also write the JSON to FILE")
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes: checks the machinery, not the speed"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=ALL_SECTIONS,
        metavar="SECTION",
        help=f"run only this section (repeatable): {', '.join(ALL_SECTIONS)}",
    )
    parser.add_argument(
        "--skip", action="append", choices=ALL_SECTIONS, metavar="SECTION", default=[]
    )
    parser.add_argument(
        "--pipeline",
        choices=drivers.PIPELINES,
        action="append",
        help="measure only this pipeline (repeatable; default both)",
    )
    parser.add_argument(
        "--emitter-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an EmitterSettings field for every emitter made (e.g. flush_interval_s=0.005)",
    )
    parser.add_argument(
        "--worker-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an extra argument for every `fleettrace worker` (e.g. --worker-arg=--batch=4000)",
    )
    parser.add_argument(
        "--worker-records",
        type=int,
        metavar="N",
        help=f"backlog each worker measurement drains (default {FULL.worker_records:,})",
    )
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument(
        "--pg-url", default=DEFAULT_PG_ADMIN_URL, help="PostgreSQL to create databases on"
    )
    parser.add_argument(
        "--baseline-drain-records",
        type=int,
        metavar="N",
        help=f"backlog the baseline drains (default {FULL.baseline_drain_records:,}; "
        "its time for the full backlog is projected from its rate)",
    )
    return parser


def _log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def _tunings(args: argparse.Namespace) -> dict[str, Any]:
    """Put ``--emitter-setting`` and ``--worker-arg`` where measurement processes and
    worker commands find them; returns them for the report."""
    settings: dict[str, Any] = {}
    for item in args.emitter_setting:
        name, _, value = item.partition("=")
        try:
            settings[name] = json.loads(value)
        except json.JSONDecodeError:
            settings[name] = value
    os.environ[drivers.EMITTER_SETTINGS_VARIABLE] = json.dumps(settings)
    os.environ[drivers.WORKER_ARGS_VARIABLE] = shlex.join(args.worker_arg)
    return {"emitter_settings": settings, "worker_args": args.worker_arg}


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = QUICK if args.quick else FULL
    tunings = _tunings(args)
    if args.worker_records:
        sizes = replace(
            sizes, worker_records=args.worker_records, baseline_worker_records=args.worker_records
        )
    if args.baseline_drain_records:
        sizes = replace(sizes, baseline_drain_records=args.baseline_drain_records)
    availability = drivers.available()
    if args.pipeline:
        availability = {
            name: (why if name.split("-")[0] in args.pipeline else "not selected")
            for name, why in availability.items()
        }
    ctx = RunContext(args.redis_url, args.pg_url, sizes, args.quick, availability=availability)
    chosen = [s for s in (args.only or ALL_SECTIONS) if s not in args.skip]
    results: dict[str, Any] = {
        "command": " ".join(["python -m benchmarks.load", *sys.argv[1:]]),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "run_id": ctx.run_id,
        "quick": args.quick,
        "machine": machine.describe(args.redis_url, args.pg_url),
        "pipelines": availability,
        "tunings": tunings,
        "sizes": sizes.__dict__,
        "sections": {},
        "section_s": {},
        "errors": {},
    }
    for name, why in availability.items():
        if why is not None:
            _log(f"pipeline {name} not measured: {why}")
    started = time.monotonic()
    try:
        for section in chosen:
            _log(f"{section} ...")
            began = time.monotonic()
            try:
                if section == "memory":
                    figures = memory.run(ctx, results["sections"])
                else:
                    figures = SECTIONS[section](ctx)
            except Exception as error:
                results["errors"][section] = f"{type(error).__name__}: {error}"
                _log(f"{section} failed: {type(error).__name__}: {str(error)[:2000]}")
                continue
            results["sections"][section] = figures
            results["section_s"][section] = round(time.monotonic() - began, 1)
            _log(f"{section} done in {results['section_s'][section]} s")
    finally:
        ctx.cleanup()
    results["duration_s"] = round(time.monotonic() - started, 1)
    results["machine"]["load_average_1m_at_end"] = machine.load_average()
    rows = report.build(results["sections"])
    rows += hook_report.rows(results["sections"].get("hooks", {}))
    rows += capacity.rows(results["sections"].get("capacity", {}))
    results["rows"] = [row.as_json() for row in rows]
    results["table"] = report.render(rows)
    results["markdown"] = report.markdown(rows)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    results = run(args)
    if args.output:
        with open(args.output, "w") as out:
            json.dump(results, out, indent=2, default=str)
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    elif args.markdown:
        print(results["markdown"])
    else:
        machine_info = results["machine"]
        quick = " (quick: sizes too small for the figures to mean much)" if args.quick else ""
        print(f"fleettrace load harness{quick}")
        print(
            f"{machine_info['cpus']} x {machine_info['cpu_model']}, "
            f"Python {machine_info['python']}, "
            f"Redis {machine_info['redis']}, PostgreSQL {machine_info['postgresql']}, "
            f"commit {machine_info['commit']}, load average {machine_info['load_average_1m']} "
            f"at start, {machine_info['load_average_1m_at_end']} at end"
        )
        print()
        print(results["table"])
    return 1 if results["errors"] else 0
