"""Memory: the emitter's at its buffer bound, and the worker's peak RSS.

The emitter is pointed at a Redis that is not there (a closed loopback port), so
nothing leaves its buffer: its resident memory is read when the buffer is at its
bound, and again after twice as many more records (the overflow policy drops the
oldest), which must not have grown it. The worker's peak RSS is
taken from the worker and drain sections (the largest any worker process reached).
"""

from __future__ import annotations

import gc
import logging
import socket
from typing import Any

from benchmarks.load import drivers, isolated
from benchmarks.load.context import RunContext
from benchmarks.load.records import TraceFactory

MB = 2**20


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def measure_emitter(buffer_records: int) -> dict[str, Any]:
    """Records are made one by one and left to the emitter, as agent code does, so what
    the buffer holds (the records and the deque) is what the RSS shows."""
    from fleettrace.model import LLMTrace

    # The emitter warns (as it should) that Redis is unreachable; here that is the point.
    logging.getLogger("fleettrace.emitter").setLevel(logging.CRITICAL)
    factory = TraceFactory()
    emitter = drivers._emitter(
        f"redis://127.0.0.1:{_closed_port()}/0",
        "bench-memory",
        max_buffer_records=buffer_records,
        overflow="drop_oldest",
        socket_timeout_s=0.2,
    )
    gc.collect()
    before = _rss_bytes()
    for _ in range(buffer_records):
        emitter.record(LLMTrace(**factory.fields()))
    gc.collect()
    at_bound = _rss_bytes()
    buffered_at_bound = emitter.stats.buffered
    for _ in range(2 * buffer_records):
        emitter.record(LLMTrace(**factory.fields()))
    gc.collect()
    after = _rss_bytes()
    stats = emitter.stats
    emitter.close(timeout_s=0.5)
    return {
        "buffer_records": buffer_records,
        # The sender holds at most one batch beside the buffer (counted as buffered).
        "batch_records": emitter.settings.max_batch_records,
        "buffered_at_bound": buffered_at_bound,
        "buffered_after_3x": stats.buffered,
        "dropped": stats.dropped,
        "rss_before_mb": round(before / MB, 1),
        "rss_at_bound_mb": round(at_bound / MB, 1),
        "rss_after_3x_mb": round(after / MB, 1),
        "emitter_mb_at_bound": round((at_bound - before) / MB, 2),
        "bytes_per_buffered_record": round((at_bound - before) / max(buffered_at_bound, 1)),
        "growth_past_bound_mb": round((after - at_bound) / MB, 2),
    }


def run(ctx: RunContext, sections: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if ctx.fleettrace_ready:
        result["emitter"] = isolated.call(
            measure_emitter, ctx.sizes.emitter_buffer_records, timeout_s=300
        )
    peaks: dict[str, float] = {}
    for section in ("worker", "drain"):
        for name, figures in sections.get(section, {}).items():
            found = [figures.get("peak_rss_mb")] + [
                v.get("peak_rss_mb") for v in figures.values() if isinstance(v, dict)
            ]
            values = [v for v in found if isinstance(v, int | float)]
            if values:
                peaks[name] = max(peaks.get(name, 0.0), *values)
    result["worker_peak_rss_mb"] = peaks
    return result
