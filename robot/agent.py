"""A small agent that records its LLM calls the way an application does, for the
smoke test.

It finds Redis and the namespace where any agent does (``FLEETTRACE_REDIS_URL``,
``FLEETTRACE_NAMESPACE``), runs one plan in which two actors make ``--calls`` LLM
calls through the hooks, waits until everything is in Redis, and prints what it
recorded as JSON on stdout, so the test can compare it with what the CLI shows.

    python robot/agent.py --plan plan-1 --calls 12
"""

from __future__ import annotations

import argparse
import json
import sys

import fleettrace

MODELS = (("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("anthropic", "claude-3-5-haiku"))


class RateLimitError(Exception):
    """What a provider's client raises when it is asked to slow down."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", required=True)
    parser.add_argument("--calls", type=int, default=10)
    args = parser.parse_args()
    emitter = fleettrace.configure()
    traces = []
    with fleettrace.plan(args.plan):
        for i in range(args.calls):
            provider, model = MODELS[i % len(MODELS)]
            with (
                fleettrace.decision(f"decision-{i}"),
                fleettrace.actor(("planner", "coder")[i % 2]) as actor,
            ):
                call = actor.llm(provider, model, retry_count=1 if i % 4 == 3 else 0)
                try:
                    with call:
                        call.update(prompt_tokens=1000 + 10 * i, completion_tokens=200 + i)
                        if i % 5 == 4:
                            raise RateLimitError("slow down")
                except RateLimitError:
                    pass
                traces.append(call.trace)
        with fleettrace.tool("search"):
            pass
    delivered = emitter.close(timeout_s=30.0)
    summary = {
        "delivered": delivered,
        "trace_ids": [str(t.trace_id) for t in traces],
        "prompt_tokens": sum(t.prompt_tokens for t in traces),
        "completion_tokens": sum(t.completion_tokens for t in traces),
        "errors": sum(t.error is not None for t in traces),
    }
    print(json.dumps(summary))
    return 0 if delivered else 1


if __name__ == "__main__":
    sys.exit(main())
