"""Trace records that look like a fleet's: a few providers and models, plans, actors,
tool calls, some errors and retries.

A record costs a dict copy, a random id and a clock read: the harness must be able
to offer tens of thousands of records per second from one process without being the
bottleneck it is measuring.

Plans: one agent process works on a handful of plans at a time, each making a run of
LLM calls, so consecutive records share plan ids: here 8 plans are interleaved at any
moment and each makes 25 calls (about 40 distinct plans per 1,000 records), and 80
plans in all. Fleet-wide there are more; per process, per second, not many.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from datetime import UTC, datetime
from typing import Any, Final

MODELS: Final = (
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-3-5-sonnet-20241022"),
    ("anthropic", "claude-3-5-haiku-20241022"),
    ("google", "gemini-1.5-pro"),
)
ACTORS: Final = tuple(f"actor-{i}" for i in range(20))
TOOLS: Final = ("search", "read_file", "write_file", "shell", "fetch", "sql")
TEMPLATES: Final = 2000
CONCURRENT_PLANS: Final = 8
CALLS_PER_PLAN: Final = 25


class TraceFactory:
    """Makes the keyword arguments of one ``LLMTrace`` per call, every field given.

    The shape of the records follows ``seed``; ids are unique across processes."""

    def __init__(self, seed: int = 7) -> None:
        rng = random.Random(seed)
        hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(64)]
        self._templates = [self._template(rng, hashes, i) for i in range(TEMPLATES)]
        self._ids = random.Random(random.SystemRandom().getrandbits(64))
        self._next = 0

    @staticmethod
    def _template(rng: random.Random, hashes: list[str], index: int) -> dict[str, Any]:
        window = CONCURRENT_PLANS * CALLS_PER_PLAN
        plan = (index // window) * CONCURRENT_PLANS + index % CONCURRENT_PLANS
        provider, model = MODELS[rng.randrange(len(MODELS))]
        failed = rng.random() < 0.05
        return {
            "trace_id": None,
            "plan_id": f"plan-{plan}",
            "decision_id": f"decision-{rng.randrange(10_000)}",
            "actor": ACTORS[rng.randrange(len(ACTORS))],
            "provider": provider,
            "model": model,
            "prompt_tokens": rng.randrange(50, 8000),
            "completion_tokens": rng.randrange(10, 2000),
            "cost_usd": round(rng.random() / 50, 6),
            "latency_ms": round(rng.uniform(80, 9000), 3),
            "tool_calls": rng.sample(TOOLS, rng.randrange(0, 3)),
            "context_hash": hashes[rng.randrange(len(hashes))],
            "streaming": rng.random() < 0.3,
            "retry_count": 1 if failed else 0,
            "error": "RateLimitError: slow down" if failed else None,
            "started_at": None,
        }

    def fields(self) -> dict[str, Any]:
        template = self._templates[self._next % TEMPLATES]
        self._next += 1
        fields = dict(template)
        fields["tool_calls"] = list(template["tool_calls"])
        fields["trace_id"] = uuid.UUID(int=self._ids.getrandbits(128), version=4)
        fields["started_at"] = datetime.now(UTC)
        return fields


#: What share of the LLM calls of a :class:`HookWorkload` fail (and are retried once)
#: and stream.
ERROR_SHARE: Final = 0.05
STREAMING_SHARE: Final = 0.30
PLAN_TAGS: Final = ("fleet-a", "nightly")
PLAN_METADATA: Final = {"tenant": "acme", "priority": 2}


class HookWorkload:
    """The LLM calls of agent code as the hooks see them, made beforehand so that
    making them is not what is timed: a provider and model, token counts that vary
    call to call (long-tailed prompts, some cached, some reasoning: a price cache
    keyed by exact counts would almost never hit), whether the call streams and
    whether it fails first (then it is retried once).

    Calls run in plans of ``CALLS_PER_PLAN``, each plan with tags and metadata that
    every call inherits, one decision and one actor around each call."""

    def __init__(self, calls: int, seed: int = 7) -> None:
        rng = random.Random(seed)
        self.calls = [self._call(rng) for _ in range(calls)]

    @staticmethod
    def _call(rng: random.Random) -> tuple[str, str, dict[str, int], bool, bool]:
        provider, model = MODELS[rng.randrange(len(MODELS))]
        prompt = int(rng.lognormvariate(7.5, 1.2)) % 400_000 + 1
        completion = int(rng.lognormvariate(5.5, 1.0)) % 30_000 + 1
        usage = {"prompt_tokens": prompt, "completion_tokens": completion}
        if rng.random() < 0.4:
            usage["cache_read_tokens"] = rng.randint(0, prompt)
        if rng.random() < 0.2:
            usage["reasoning_tokens"] = rng.randint(0, completion)
        return provider, model, usage, rng.random() < STREAMING_SHARE, rng.random() < ERROR_SHARE

    def plans(self) -> list[list[tuple[str, str, dict[str, int], bool, bool]]]:
        """The calls cut into plans of ``CALLS_PER_PLAN``."""
        return [
            self.calls[i : i + CALLS_PER_PLAN] for i in range(0, len(self.calls), CALLS_PER_PLAN)
        ]


class RateLimited(Exception):
    """The error a failing call of a :class:`HookWorkload` raises inside its block."""
