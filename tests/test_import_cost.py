"""`import fleettrace` leaves the heavy libraries unloaded until they are needed.

An agent imports fleettrace at start-up, often in processes that never record
anything (a CLI, a test run): the public names load on first use, pydantic with
the first of them, and redis-py and genai-prices only when an emitter connects or
prices its first call, on the sender thread. The
time and memory of the import are figures of the load harness
(``benchmarks/load/imports.py``); this proves the behaviour they rest on, and that
the emitter still delivers a priced record end to end once they load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import redis

from fleettrace.keys import Keys
from tests.emitting import stream_records

#: Modules `import fleettrace` must not load (each with what loads it later).
LAZY_MODULES = (
    "pydantic",  # the record model, with the first public name used
    "redis",  # the emitter's client, made with the first emitter
    "genai_prices",  # the price table, read when the first call is priced
    "ssl",  # only a rediss:// URL needs it
    "tomllib",  # only a price file needs it
)

_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import fleettrace
    loaded_after_import = sorted(m for m in {lazy!r} if m in sys.modules)
    from fleettrace import Emitter, EmitterSettings, LLMTrace, llm_call
    loaded_with_hooks = sorted(m for m in {lazy!r} if m in sys.modules)
    emitter = Emitter(EmitterSettings(redis_url={url!r}, namespace={namespace!r},
                                      flush_interval_s=0.01))
    trace = LLMTrace(provider="openai", model="gpt-4o", prompt_tokens=1000,
                     completion_tokens=500, plan_id="import-cost")
    emitter.record(trace)
    flushed = emitter.flush(timeout_s=10)
    emitter.close()
    print(json.dumps({{"loaded_after_import": loaded_after_import, "flushed": flushed,
                      "loaded_with_hooks": loaded_with_hooks,
                      "trace_id": str(trace.trace_id),
                      "loaded_after_use": sorted(m for m in {lazy!r} if m in sys.modules)}}))
    """
)


def test_import_leaves_heavy_modules_unloaded_and_emitter_still_delivers(
    redis_url: str, keys: Keys, redis_client: redis.Redis
) -> None:
    script = _SCRIPT.format(lazy=LAZY_MODULES, url=redis_url, namespace=keys.namespace)
    # Without the suite's coverage start-up in the child: coverage itself loads tomllib
    # (to read pyproject.toml) before the script's first line.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["loaded_after_import"] == []
    # The hooks and the model need pydantic; nothing loads Redis or prices before use.
    assert report["loaded_with_hooks"] == ["pydantic"]
    assert report["flushed"] is True
    # Sending and pricing loaded what they need, on first use.
    assert {"redis", "genai_prices"} <= set(report["loaded_after_use"])
    [stored] = stream_records(redis_client, keys.traces)
    assert str(stored.trace_id) == report["trace_id"]
    # Priced on the sender thread with genai-prices loaded late: 1000 x 2.5/M + 500 x 10/M.
    assert stored.cost_usd == 0.0075
