"""What ``import fleettrace`` costs an agent's process at start-up, beside ``import
langsmith`` measured the same way in the same run.

Each import runs in a fresh interpreter (``python -c``), timed with
``perf_counter`` around the import statement, and its cost in memory is the growth
of the resident set (VmRSS) across it; the figure is the median of the runs. The
CPU time of the import is reported beside its wall time.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from typing import Any, Final

from benchmarks.load.context import RunContext
from benchmarks.load.processes import ROOT

RUNS: Final = 7
QUICK_RUNS: Final = 3
_PROBE: Final = """
import json, sys, time
def rss_kb():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
before = rss_kb()
cpu, started = time.process_time(), time.perf_counter()
import {module}
seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu
print(json.dumps({{"ms": seconds * 1000, "cpu_ms": cpu_s * 1000,
                  "rss_mb": (rss_kb() - before) / 1024, "modules": len(sys.modules)}}))
"""


def measure(module: str, runs: int) -> dict[str, Any]:
    samples = []
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-c", _PROBE.format(module=module)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
            cwd=ROOT,
        )
        samples.append(json.loads(done.stdout))
    return {
        "ms": round(statistics.median(s["ms"] for s in samples), 1),
        "ms_min": round(min(s["ms"] for s in samples), 1),
        # What the import itself used of a CPU: on a loaded machine the wall time also
        # holds the time other processes had the CPU.
        "cpu_ms": round(statistics.median(s["cpu_ms"] for s in samples), 1),
        "rss_mb": round(statistics.median(s["rss_mb"] for s in samples), 1),
        "modules": samples[-1]["modules"],
    }


def run(ctx: RunContext) -> dict[str, Any]:
    runs = QUICK_RUNS if ctx.quick else RUNS
    result: dict[str, Any] = {"runs": runs}
    # Each beside the other, so a burst of load on the machine hits both alike. Then
    # the first use of each: its hooks (fleettrace) and @traceable (langsmith).
    for module in ("langsmith", "fleettrace"):
        result[module] = measure(module, runs)
    for module, key in (
        ("langsmith.run_helpers", "langsmith_first_use"),
        ("fleettrace.hooks", "fleettrace_first_use"),
    ):
        result[key] = measure(module, runs)
    return result
