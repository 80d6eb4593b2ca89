"""The demo's dashboard: served from the start; on a terminal kept up after the proof
with new plans arriving until Ctrl-C; and the data a demo left reopened later with
``--data-dir`` by the dashboard and the reading commands."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dashboard_helpers import get_json, request
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(300)

URL_VARIABLES = ("FLEETTRACE_REDIS_URL", "REDIS_URL", "FLEETTRACE_DATABASE_URL", "DATABASE_URL")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")
DASHBOARD = re.compile(r"Dashboard: (http://127\.0\.0\.1:\d+)/")
VERDICT = re.compile(r"records sent = rows stored \+ dead letters: (\d+) = (\d+) \+ (\d+)")
STORED = re.compile(r"rows stored: \d+ \((\d+) llm_traces")
RUN = re.compile(r"Run (demo-[0-9a-f]+):")
SERVING = re.compile(r"serving (http://127\.0\.0\.1:\d+)/")
FLEETTRACE = [sys.executable, "-m", "fleettrace_worker.cli"]


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A directory outside pytest's own: PostgreSQL runs as another user when root and
    must reach it while other pytest sessions make theirs private (as test_embedded)."""
    path = Path(tempfile.mkdtemp(prefix="fleettrace-demo-dash-"))
    yield path / "data"
    shutil.rmtree(path, ignore_errors=True)


def _env(data_dir: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in URL_VARIABLES}
    env["FLEETTRACE_DATA_DIR"] = str(data_dir)
    return env


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Terminal:
    """A process on a pseudo-terminal (stdin and stdout), its output collected."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 220, 0, 0))
        self.proc = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,  # its own process group, as a shell makes for a job
        )
        os.close(slave)
        self._master = master
        self._closed = False
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        # Read as it comes, so a full pipe never blocks the demo and a failure can show it.
        self._errors: list[bytes] = []
        self._error_reader = threading.Thread(target=self._read_errors, daemon=True)
        self._error_reader.start()

    def _read_errors(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._errors.append(line)

    def _read(self) -> None:
        while True:
            ready, _, _ = select.select([self._master], [], [], 0.2)
            if not ready:
                if self.proc.poll() is not None:
                    return
                continue
            try:
                chunk = os.read(self._master, 65536)
            except OSError:  # EIO: the other end closed
                return
            if not chunk:
                return
            self._chunks.append(chunk)

    @property
    def text(self) -> str:
        return ANSI.sub("", b"".join(self._chunks).decode(errors="replace"))

    @property
    def errors(self) -> str:
        """What the process wrote to stderr so far."""
        return b"".join(self._errors).decode(errors="replace")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._reader.join(10)
        self._error_reader.join(10)
        os.close(self._master)


@pytest.mark.slow
def test_on_a_terminal_the_demo_keeps_its_dashboard_up_until_ctrl_c(data_dir: Path) -> None:
    term = Terminal(
        [*FLEETTRACE, "demo", "--agents", "1", "--plans", "2", "--port", "0"], _env(data_dir)
    )
    try:
        wait_until(lambda: "Ctrl-C to stop" in term.text, 240, "the demo's live phase")
        out = term.text
        url, verdict = DASHBOARD.search(out), VERDICT.search(out)
        stored, run = STORED.search(out), RUN.search(out)
        assert url and verdict and stored and run, out
        base, traces, dead = url.group(1), int(stored.group(1)), int(verdict.group(3))
        assert f"fleettrace dashboard --data-dir {data_dir} --namespace {run.group(1)}" in out

        status, _, page = request(f"{base}/")
        assert status == 200, term.errors
        assert run.group(1).encode() in page
        status, overview = get_json(f"{base}/api/overview")
        assert status == 200, term.errors
        assert overview["namespace"] == run.group(1)
        assert overview["dead_letters"]["persist"] == dead == 1
        status, activity = get_json(f"{base}/api/activity")
        assert status == 200, term.errors
        assert activity["items"][0]["calls"] >= traces > 0
        # New plans keep arriving: the page moves.
        wait_until(
            lambda: get_json(f"{base}/api/activity")[1]["items"][0]["calls"] > traces,
            120,
            "calls after the proof",
        )
        redis_pid = json.loads((data_dir / "redis" / "server.json").read_text())["pid"]
        postgres_pid = int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
        assert _alive(redis_pid) and _alive(postgres_pid)

        os.killpg(term.proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the group
        assert term.proc.wait(120) == 0, term.errors
        term.close()  # every line of stderr read
        stderr = term.errors
        assert "Traceback" not in stderr
        assert "KeyboardInterrupt" not in stderr
        wait_until(lambda: "stopped" in term.text, 10, "the last line")
        tail = term.text[term.text.index("Ctrl-C to stop") :].strip().splitlines()
        assert len(tail) == 2
        assert re.fullmatch(r"fleettrace demo: stopped \(\d+ more plans since the proof\)", tail[1])
        wait_until(lambda: not _alive(redis_pid), 20, "Redis to stop")
        wait_until(lambda: not _alive(postgres_pid), 20, "PostgreSQL to stop")
    finally:
        term.close()


def _fleettrace(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FLEETTRACE, *argv], env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.slow
def test_the_data_a_demo_left_is_read_again_with_data_dir(data_dir: Path) -> None:
    env = _env(data_dir)
    demo = _fleettrace("demo", "--agents", "1", "--plans", "2", "--json", env=env)
    assert demo.returncode == 0, demo.stderr
    report = json.loads(demo.stdout)  # without a terminal it exited after the proof
    ns = report["namespace"]
    assert DASHBOARD.search(demo.stderr)  # the URL was printed (to stderr with --json)
    by_model = {item["group"]["model"]: item["calls"] for item in report["cost_by_model"]["items"]}
    env.pop("FLEETTRACE_DATA_DIR")  # --data-dir says it

    listed = _fleettrace(
        "traces", "list", "--json", "--limit", "1000", "--data-dir", str(data_dir),
        "--namespace", ns, env=env,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    items = json.loads(listed.stdout)["items"]
    assert len(items) == report["traces_stored"] > 0
    assert all(item["plan_id"].startswith(f"{ns}-") for item in items)
    metrics = _fleettrace(
        "metrics", "--json", "--data-dir", str(data_dir), "--namespace", ns, env=env
    )
    assert metrics.returncode == 0, metrics.stderr
    assert json.loads(metrics.stdout)["items"]  # the live counters came back from Redis's file

    dashboard = subprocess.Popen(
        [*FLEETTRACE, "dashboard", "--data-dir", str(data_dir), "--namespace", ns, "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert dashboard.stdout is not None
        serving = SERVING.search(dashboard.stdout.readline())
        assert serving, dashboard.stderr.read() if dashboard.stderr else ""
        status, cost = get_json(f"{serving.group(1)}/api/cost?by=model&range=24h")
        assert status == 200
        assert {item["key"]: item["calls"] for item in cost["items"]} == by_model
        # While it runs, the directory is in use: a second reader is refused in one line.
        busy = _fleettrace("traces", "list", "--data-dir", str(data_dir), env=env)
        assert busy.returncode == 2
        assert busy.stderr == (
            f"fleettrace traces: --data-dir {str(data_dir)!r} is in use by process "
            f"{dashboard.pid} (a fleettrace demo or a command reading its data): wait for it "
            "to end or stop it, then try again\n"
        )
        redis_pid = json.loads((data_dir / "redis" / "server.json").read_text())["pid"]
        postgres_pid = int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
        dashboard.send_signal(signal.SIGINT)
        assert dashboard.wait(60) == 0
        # The servers it started for itself stopped with it.
        wait_until(lambda: not _alive(redis_pid), 20, "Redis to stop")
        wait_until(lambda: not _alive(postgres_pid), 20, "PostgreSQL to stop")
    finally:
        if dashboard.poll() is None:
            dashboard.kill()
            dashboard.wait(10)

    empty = data_dir.parent / "empty"
    empty.mkdir()
    refusals = {
        str(empty): "holds no fleettrace data (no PostgreSQL cluster in it); "
        f"`fleettrace demo --data-dir {empty}` leaves its data there",
        str(empty / "nowhere"): "does not exist",
        str(data_dir / "postgres" / "PG_VERSION"): "is not a directory",
    }
    for where, message in refusals.items():
        refused = _fleettrace("traces", "cost", "--data-dir", where, env=env)
        assert (refused.returncode, refused.stderr) == (
            2,
            f"fleettrace traces: --data-dir {where!r} {message}\n",
        )
    both = _fleettrace(
        "traces", "list", "--data-dir", str(data_dir), "--database-url", "postgresql://x/y",
        env=env,
    )  # fmt: skip
    assert (both.returncode, both.stderr) == (
        2,
        "fleettrace traces: --data-dir and --database-url both say where to read: give one\n",
    )
    no_redis = _fleettrace("dlq", "list", "--data-dir", str(empty), env=env)
    assert no_redis.returncode == 2
    assert "holds no fleettrace data (no redis/ in it)" in no_redis.stderr
