"""What the figures were measured on: they mean nothing without it."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import redis


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
            check=False,
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def load_average() -> float:
    """Other work on the machine skews every figure: recorded at start and end."""
    return round(os.getloadavg()[0], 2)


def describe(redis_url: str, pg_admin_url: str) -> dict[str, Any]:
    client = redis.Redis.from_url(redis_url)
    try:
        redis_version = str(client.info("server").get("redis_version"))
    finally:
        client.close()
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "redis": redis_version,
        "postgresql": row[0] if row else None,
        "commit": _commit(),
        "load_average_1m": load_average(),
    }
