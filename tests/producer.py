"""A producer process for the worker tests: ``python -m tests.producer NAMESPACE URL
START COUNT SAMPLES SECONDS`` records COUNT traces (ids from START) and SAMPLES metric
observations through the real emitter, spread over about SECONDS, then flushes."""

from __future__ import annotations

import sys
import time

from fleettrace.emitter import Emitter, EmitterSettings
from fleettrace.metrics import MetricKey
from tests.factories import numbered_trace


def main(argv: list[str]) -> int:
    namespace, url, start, count, samples, seconds = argv
    first, total, observations = int(start), int(count), int(samples)
    pause_s = float(seconds) / 10
    # from_env: FLEETTRACE_REDIS_CLUSTER and the WAIT settings come from the environment.
    settings = EmitterSettings.from_env(redis_url=url, namespace=namespace, max_batch_records=500)
    emitter = Emitter(settings)
    for step in range(10):
        for i in range(first + step * total // 10, first + (step + 1) * total // 10):
            emitter.record(numbered_trace(i))
        for i in range(step * observations // 10, (step + 1) * observations // 10):
            emitter.observe(MetricKey.TOOL_INVOCATION_DURATION_MS, float(i), {"tool": "search"})
        time.sleep(pause_s)
    sent = emitter.flush(60)
    emitter.close()
    stats = emitter.stats
    print(f"accepted={stats.accepted} sent={stats.sent} dropped={stats.dropped}")
    return 0 if sent and stats.dropped == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
