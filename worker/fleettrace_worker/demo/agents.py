"""One simulated agent process, and the misbehaving producer.

An agent records the way a user's agent does: its LLM calls go through the real
``openai`` client wrapped once by ``fleettrace.integrations.wrap_openai``, to the
demo's local OpenAI-compatible server (:mod:`.llm_server`), so model, tokens
(varied, cache reads included), latency, streaming, the client's own retries, tool
calls and errors are filled in by the integration, with no hand-written ``update``;
plans, phases, decisions, actors, tools, context builds, index queries, sandbox
operations and the hot-context gauge are marked with the hooks.

The agent picks which calls meet rate limits (by count, not chance: even a short run
shows retried and failed calls) and tells the server so in a request header; the
client then retries by itself, as it would against a provider.
"""

from __future__ import annotations

import multiprocessing.queues
import random
import time
from dataclasses import dataclass
from typing import Any, Final, Protocol

import openai
import orjson
import redis

from fleettrace import hooks
from fleettrace.codec import Kind, encode_lines, encode_record, new_batch_id
from fleettrace.emitter import configure
from fleettrace.integrations import wrap_openai
from fleettrace.keys import Keys
from fleettrace.model import LLMTrace
from fleettrace.redis_errors import translate_redis_errors
from fleettrace_worker.demo.llm_server import FAILURES_HEADER
from fleettrace_worker.demo.settings import AgentReport, DemoSettings

#: (provider, model) pairs the agents call, each provider through an OpenAI-compatible
#: endpoint of its own (Anthropic has one too); the last is unknown to the price table.
MODELS: Final = (
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-3-5-sonnet-latest"),
    ("anthropic", "claude-3-5-haiku-latest"),
    ("acme", "acme-reasoner-2"),
)
PROVIDERS: Final = tuple(dict.fromkeys(provider for provider, _ in MODELS))
ACTORS: Final = ("planner", "researcher", "coder", "reviewer")
TOOLS: Final = ("search", "read_file", "run_tests", "http_get")
TOOL_SPECS: Final = [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
    for name in TOOLS
]
#: Every RETRY_EVERY-th LLM call of an agent meets 1-3 rate limits its client retries,
#: every FAIL_EVERY-th more than the client retries (it fails); a share of tool runs fail.
RETRY_EVERY: Final = 8
FAIL_EVERY: Final = 16
MAX_RETRIES: Final = 3
STREAMING_SHARE: Final = 0.3
TOOLS_OFFERED_SHARE: Final = 0.5
TOOL_FAILURE_RATE: Final = 0.1
#: How long an agent's emitter may take to deliver its last records at the end.
AGENT_CLOSE_TIMEOUT_S: Final = 30.0
SYSTEM_PROMPT: Final = "You are one agent of a fleet. Answer briefly."


class ToolError(Exception):
    """A simulated tool failure."""


class EventLike(Protocol):
    """What an agent needs of its stop event (a ``multiprocessing`` Event)."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


@dataclass
class Simulation:
    """One agent's dice: random choices, and the count of its LLM calls."""

    rng: random.Random
    llm_calls: int = 0

    def next_llm_call(self) -> tuple[int, bool]:
        """(retries before this call succeeded or failed, whether it fails)."""
        number = self.llm_calls
        self.llm_calls += 1
        retries = self.rng.randint(1, 3) if number % RETRY_EVERY == 1 else 0
        return retries, number % FAIL_EVERY == 2


def clients(base_url: str) -> dict[str, openai.OpenAI]:
    """One wrapped client per provider, all on the local server; the request's messages
    are hashed into ``context_hash`` (never recorded themselves)."""
    return {
        provider: wrap_openai(
            openai.OpenAI(base_url=base_url, api_key="sk-demo-local", max_retries=MAX_RETRIES),
            provider=provider,
            hash_context=True,
        )
        for provider in PROVIDERS
    }


def _llm_calls(sim: Simulation, llm: dict[str, openai.OpenAI]) -> None:
    rng = sim.rng
    for _ in range(rng.randint(1, 3)):
        provider, model = rng.choice(MODELS)
        retries, fails = sim.next_llm_call()
        failures = MAX_RETRIES + 1 if fails else retries
        options: dict[str, Any] = {
            "model": model,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": " ".join(["context"] * rng.randint(200, 4000))},
            ],
            "max_completion_tokens": rng.randint(20, 800),
        }
        if failures:
            options["extra_headers"] = {FAILURES_HEADER: str(failures)}
        if rng.random() < TOOLS_OFFERED_SHARE:
            options["tools"] = TOOL_SPECS
        try:
            if rng.random() < STREAMING_SHARE:
                for _chunk in llm[provider].chat.completions.create(stream=True, **options):
                    pass
            else:
                llm[provider].chat.completions.create(**options)
        except openai.APIError:
            pass  # the trace carries the error; the agent moves on


def _use_tool(rng: random.Random) -> None:
    try:
        with hooks.tool(rng.choice(TOOLS)):
            time.sleep(rng.uniform(0.0002, 0.001))
            if rng.random() < TOOL_FAILURE_RATE:
                raise ToolError("tool failed")
    except ToolError:
        pass


def run_plan(sim: Simulation, llm: dict[str, openai.OpenAI], plan_id: str) -> None:
    """One plan as an agent would run it: the LLM calls through the wrapped clients,
    the rest marked with the hooks."""
    rng = sim.rng
    with hooks.plan(plan_id):
        with hooks.phase("prepare"):
            with hooks.context_build(rng.choice(("hot", "warm", "cold"))):
                time.sleep(rng.uniform(0.0002, 0.001))
            hooks.set_hot_context_tokens(rng.randint(1_000, 32_000))
            with hooks.index_query(rng.choice(("text", "vector", "graph"))):
                time.sleep(rng.uniform(0.0002, 0.001))
        with hooks.phase("execute"):
            for _ in range(rng.randint(1, 3)):
                with hooks.decision(), hooks.actor(rng.choice(ACTORS)):
                    _llm_calls(sim, llm)
                    _use_tool(rng)
            with hooks.sandbox("create"):
                pass
            with hooks.sandbox("commit" if rng.random() < 0.8 else "rollback"):
                pass
        if rng.random() < 0.2:
            with hooks.plan(f"{plan_id}.child"), hooks.actor("reviewer"):
                _llm_calls(sim, llm)


def run_agent(
    settings: DemoSettings,
    llm_url: str,
    agent: int,
    reports: multiprocessing.queues.Queue[AgentReport],
    stop: EventLike,
) -> None:
    """The body of one agent process: run plans until done or told to stop, flush,
    report what the emitter did."""
    emitter = configure(redis_url=settings.redis_url, namespace=settings.namespace)
    llm = clients(llm_url)
    sim = Simulation(random.Random(f"{settings.run_id}-{agent}"))
    deadline = None if settings.seconds is None else time.monotonic() + settings.seconds
    plans = 0
    while not stop.is_set() and (
        plans < settings.plans if deadline is None else time.monotonic() < deadline
    ):
        run_plan(sim, llm, f"{settings.run_id}-a{agent}-p{plans}")
        plans += 1
        if settings.pause_s is not None:
            stop.wait(sim.rng.uniform(*settings.pause_s))
    for client in llm.values():
        client.close()
    emitter.close(AGENT_CLOSE_TIMEOUT_S)
    stats = emitter.stats
    reports.put(AgentReport(agent, plans, stats.sent, stats.dropped))


def send_malformed(client: redis.Redis, keys: Keys, run_id: str, count: int) -> int:
    """XADD one batch past the emitter, as a buggy or hostile producer might: every
    other record has a negative token count. The worker stores the good ones and
    dead-letters the others with the reason; returns the records written."""
    lines = []
    for position in range(count):
        trace = LLMTrace(
            provider="acme",
            model="acme-reasoner-2",
            plan_id=f"{run_id}-handwritten",
            prompt_tokens=100,
            completion_tokens=10,
        )
        line = encode_record(trace)
        if position % 2 == 0:
            record = orjson.loads(line)
            record["prompt_tokens"] = -100
            line = orjson.dumps(record)
        lines.append(line)
    if lines:
        fields: dict[Any, Any] = encode_lines(Kind.TRACE, lines, new_batch_id())
        with translate_redis_errors("writing the malformed batch"):
            client.xadd(keys.traces, fields)
    return len(lines)
