"""Run one measurement in a fresh interpreter, with a deadline.

Each measurement gets its own process (``spawn``), so none inherits another's heap,
threads or garbage-collector state, and a wedged one is killed instead of hanging
the run.
"""

from __future__ import annotations

import multiprocessing
import traceback
from collections.abc import Callable
from typing import Any

_CONTEXT = multiprocessing.get_context("spawn")


class MeasurementFailed(RuntimeError):
    """The measurement raised, died or ran past its deadline."""


def _child(conn: Any, func: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        conn.send(("ok", func(*args)))
    except BaseException as error:
        conn.send(("error", f"{type(error).__name__}: {error}\n{traceback.format_exc()}"))
    finally:
        conn.close()


def start(func: Callable[..., Any], *args: Any) -> tuple[Any, Any]:
    """Start ``func(*args)`` in a new process; returns (process, receiving end)."""
    parent, child = _CONTEXT.Pipe(duplex=False)
    process = _CONTEXT.Process(target=_child, args=(child, func, args), daemon=True)
    process.start()
    child.close()
    return process, parent


def finish(process: Any, conn: Any, timeout_s: float) -> Any:
    """The result of a process made by :func:`start`; kills it past the deadline."""
    try:
        if not conn.poll(timeout_s):
            raise MeasurementFailed(f"no result after {timeout_s:.0f} s")
        try:
            status, value = conn.recv()
        except EOFError:
            raise MeasurementFailed(f"process died (exit code {process.exitcode})") from None
        if status != "ok":
            raise MeasurementFailed(value)
        return value
    finally:
        # A library's exit hook (a tracing client flushing) must not hold the run up.
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join(5)
        conn.close()


def call(func: Callable[..., Any], *args: Any, timeout_s: float) -> Any:
    process, conn = start(func, *args)
    return finish(process, conn, timeout_s)


def shared_counter() -> Any:
    """An integer both a measurement process and the harness can read."""
    return _CONTEXT.Value("q", 0, lock=False)


def shared_flag() -> Any:
    return _CONTEXT.Event()
