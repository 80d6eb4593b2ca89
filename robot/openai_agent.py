"""An agent that uses the OpenAI client and has no fleettrace code but one wrap.

It finds Redis and the namespace where any agent does (``FLEETTRACE_REDIS_URL``,
``FLEETTRACE_NAMESPACE``: the default emitter reads them), makes ``--calls`` chat
completions against ``--base-url`` (every third one streamed, every fourth one asking
for a tool), and exits; the records still buffered are sent at interpreter exit.
It prints what the client answered as JSON, for the test to compare with the store.

    python robot/openai_agent.py --base-url http://127.0.0.1:8000/v1 --calls 6
"""

from __future__ import annotations

import argparse
import json
import sys

import openai

from fleettrace.integrations import wrap_openai

TOOLS = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--calls", type=int, default=6)
    args = parser.parse_args()

    client = wrap_openai(openai.OpenAI(base_url=args.base_url, api_key="sk-local"))

    answered = {"calls": 0, "streamed": 0, "models": [], "tool_calls": 0}
    for i in range(args.calls):
        messages = [{"role": "user", "content": f"question {i}"}]
        extra = {"tools": TOOLS} if i % 4 == 3 else {}
        if i % 3 == 2:
            chunks = list(
                client.chat.completions.create(
                    model="gpt-4o", messages=messages, stream=True, **extra
                )
            )
            answered["models"].append(chunks[0].model)
            answered["streamed"] += 1
        else:
            reply = client.chat.completions.create(model="gpt-4o", messages=messages, **extra)
            answered["models"].append(reply.model)
        answered["calls"] += 1
        answered["tool_calls"] += bool(extra)
    print(json.dumps(answered))
    return 0


if __name__ == "__main__":
    sys.exit(main())
