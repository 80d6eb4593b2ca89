"""Worker processes the harness starts, watches and stops, fleettrace's and the
baseline's alike: each is a command line, so both are measured the same way."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[2]
_SAMPLE_INTERVAL_S: Final = 0.05


def children_cpu_s() -> float:
    """CPU seconds used by the waited-for children of this process so far.

    Taken before and after a worker runs, the difference is what the worker used:
    a figure that other load on the machine skews far less than wall time."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def peak_rss_bytes(pid: int) -> int | None:
    """The kernel's high-water mark of the process's resident set (VmHWM)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


class WorkerProcess:
    """One worker process with its peak RSS sampled while it runs."""

    def __init__(self, argv: Sequence[str], *, label: str) -> None:
        self.label = label
        self.started = time.perf_counter()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            filter(
                None, (str(ROOT), str(ROOT / "src"), str(ROOT / "worker"), env.get("PYTHONPATH"))
            )
        )
        self._stderr_path = Path(f"/tmp/fleettrace-bench-{os.getpid()}-{id(self)}.log")
        self._stderr = self._stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, *argv],
            stdout=self._stderr,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
        self.peak_rss = 0
        self.ended: float | None = None
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while self.proc.poll() is None:
            peak = peak_rss_bytes(self.proc.pid)
            if peak is not None:
                self.peak_rss = max(self.peak_rss, peak)
            time.sleep(_SAMPLE_INTERVAL_S)
        self.ended = time.perf_counter()

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout_s: float) -> int:
        """Exit code; the process is killed (and this raises) past the deadline."""
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise TimeoutError(f"{self.label} still running after {timeout_s:.0f} s") from None
        self._watcher.join(1)
        self._close_log()
        return code

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM: finish the batch in hand and exit."""
        if self.running:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout_s)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait(10)
        self._close_log()

    def output_tail(self, chars: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self._stderr_path.read_text(errors="replace")[-chars:]
        return ""

    def _close_log(self) -> None:
        if not self._stderr.closed:
            self._stderr.close()

    def discard_log(self) -> None:
        self._close_log()
        with contextlib.suppress(OSError):
            self._stderr_path.unlink()

    @property
    def elapsed_s(self) -> float:
        end = self.ended if self.ended is not None else time.perf_counter()
        return end - self.started
