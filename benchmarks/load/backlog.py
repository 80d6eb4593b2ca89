"""A backlog in the stream, as producers that have finished leave it."""

from __future__ import annotations

import os
from typing import Final

from benchmarks.load import drivers, isolated

#: Processes that fill a backlog together (the machine has two cores).
PREFILL_PROCESSES: Final = 2


def prefill(name: str, redis_url: str, namespace: str, records: int) -> float:
    """Fill the stream with ``records`` records from several processes; returns seconds."""
    import time

    started = time.perf_counter()
    shares = [records // PREFILL_PROCESSES] * PREFILL_PROCESSES
    shares[0] += records - sum(shares)
    running = [
        isolated.start(drivers.prefill, name, redis_url, namespace, share, index + os.getpid())
        for index, share in enumerate(shares)
        if share
    ]
    filled = sum(isolated.finish(p, c, timeout_s=900) for p, c in running)
    if filled != records:
        raise RuntimeError(f"prefill wrote {filled} records, expected {records}")
    return time.perf_counter() - started
