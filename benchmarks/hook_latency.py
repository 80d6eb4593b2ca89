"""Per-call latency of the LLM hook on the agent's thread, with varied token counts.

One call is what agent code pays: enter ``llm_call``, ``update`` with the call's
tokens (varied per call, as real calls are: a price cache keyed by exact token counts
would almost never hit), exit, with the cost left to fleettrace. The emitter sends to
a fresh namespace of the machine's Redis meanwhile, so its sender thread competes
for the interpreter as it does in an agent. Prints p50, p90, p99 and p99.9 in µs::

    python -m benchmarks.hook_latency [--calls 20000] [--redis-url URL]

The namespace is deleted at the end.
"""

from __future__ import annotations

import argparse
import random
import time
import uuid

import redis

import fleettrace
from fleettrace.emitter import Emitter, EmitterSettings
from fleettrace.keys import Keys

MODELS = (
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-3-5-sonnet-latest"),
    ("google", "gemini-1.5-pro"),
)


def varied_usage(rng: random.Random) -> dict[str, int]:
    """Tokens as real calls vary: long-tailed prompts, some cached, some reasoning."""
    prompt = int(rng.lognormvariate(7.5, 1.2)) % 400_000 + 1
    completion = int(rng.lognormvariate(5.5, 1.0)) % 30_000 + 1
    usage = {"prompt_tokens": prompt, "completion_tokens": completion}
    if rng.random() < 0.4:
        usage["cache_read_tokens"] = rng.randint(0, prompt)
    if rng.random() < 0.2:
        usage["reasoning_tokens"] = rng.randint(0, completion)
    return usage


def measure(emitter: Emitter, calls: int, seed: int = 7, totals_only: bool = False) -> list[int]:
    rng = random.Random(seed)
    plan = [(MODELS[i % len(MODELS)], varied_usage(rng)) for i in range(calls)]
    if totals_only:  # what versions before the token details take
        plan = [(m, {k: u[k] for k in ("prompt_tokens", "completion_tokens")}) for m, u in plan]
    durations = []
    clock = time.perf_counter_ns
    llm_call = fleettrace.llm_call
    for (provider, model), usage in plan:
        started = clock()
        with llm_call(provider, model, emitter=emitter) as call:
            call.update(**usage)
        durations.append(clock() - started)
    return durations


def percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--totals-only", action="store_true", help="no token details")
    args = parser.parse_args()
    keys = Keys(f"bench-{uuid.uuid4().hex[:12]}")
    emitter = Emitter(EmitterSettings(redis_url=args.redis_url, namespace=keys.namespace))
    try:
        measure(emitter, 2000, seed=1, totals_only=args.totals_only)  # warm up
        durations = measure(emitter, args.calls, totals_only=args.totals_only)
        emitter.flush(30)
    finally:
        emitter.close()
        client = redis.Redis.from_url(args.redis_url)
        for key in client.scan_iter(match=f"{keys.prefix}*", count=1000):
            client.delete(key)
        client.close()
    shown = ", ".join(
        f"p{label} {percentile(durations, q):.1f} µs"
        for label, q in (("50", 0.5), ("90", 0.9), ("99", 0.99), ("99.9", 0.999))
    )
    print(f"llm hook, {args.calls} calls with varied tokens: {shown}")


if __name__ == "__main__":
    main()
