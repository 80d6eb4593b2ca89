"""``FleettraceCallbackHandler``: LangChain runs as fleettrace plans, calls and tools.

    from fleettrace.integrations import FleettraceCallbackHandler

    handler = FleettraceCallbackHandler()
    chain.invoke(inputs, config={"callbacks": [handler]})     # or callbacks=[handler]

How runs map (LangChain hands every callback its ``run_id`` and ``parent_run_id``,
so the tree is rebuilt here, which works the same from sync and async chains and
from executor threads):

- the root run (no parent) is a plan: the fleettrace plan open around it if any,
  else a plan whose id is the run id, timed as phase ``total`` when the run ends;
- an agent action (``on_agent_action``) starts a decision that the agent's later
  runs belong to; inside a ``fleettrace.decision`` the open decision is used;
- the actor is the open ``fleettrace.actor``, else the run's ``metadata``
  ``fleettrace_actor`` or LangGraph's ``langgraph_node``, else the root run's name;
- chat model and LLM runs are LLM calls (usage from ``usage_metadata``, else from
  ``llm_output["token_usage"]``; tool calls the model requested, by name);
- tool runs are tool invocations (duration and outcome, as ``fleettrace.tool``), each
  also a ``ToolCall`` record of the plan tree;
- every record is placed in its plan tree: under the open fleettrace plan's root, or,
  for a plan the handler opened itself, as that plan's own tree, whose ``PlanRecord``
  (start, end, status) is recorded when the root run ends.

Every callback is guarded: a failure in bookkeeping is logged, never raised into
the chain (``raise_error`` stays false).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from langchain_core.callbacks import BaseCallbackHandler

from fleettrace import hooks, plan_scope
from fleettrace.emitter import Emitter, hook_emitter
from fleettrace.integrations._calls import Call, CallObserver, first_claim, tokens
from fleettrace.metrics import MetricKey
from fleettrace.model import MAX_NAME_CHARS
from fleettrace.tree_records import PlanRecord

_ACTOR_KEYS: Final = ("fleettrace_actor", "langgraph_node")
_MS: Final = 1000.0

logger = logging.getLogger("fleettrace.integrations")


@dataclass(slots=True)
class _Run:
    plan_id: str | None
    decision_id: str | None
    actor: str | None
    started_s: float
    owns_plan: bool = False
    tool: str | None = None
    call: Call | None = None
    #: The tree fields of the run's records (see fleettrace.plan_scope.place_fields).
    place: dict[str, Any] = field(default_factory=dict)


def _label(value: object, default: str) -> str:
    text = value if isinstance(value, str) and value else default
    return text.replace("\x00", "")[:MAX_NAME_CHARS] or default


class FleettraceCallbackHandler(BaseCallbackHandler):
    """Records LangChain runs through fleettrace; pass it per call or in a RunnableConfig."""

    run_inline = True  # no executor hop in async chains: the callbacks only enqueue

    def __init__(
        self,
        *,
        provider: str | None = None,
        emitter: Emitter | None = None,
        on_call: CallObserver | None = None,
    ) -> None:
        super().__init__()
        self._provider = provider
        self._emitter = emitter
        self._on_call = on_call
        self._runs: dict[uuid.UUID, _Run] = {}
        self._lock = threading.Lock()

    # -- the run tree -----------------------------------------------------------------

    def _start(self, run_id: uuid.UUID, parent: uuid.UUID | None, name: str, metadata: Any) -> _Run:
        with self._lock:
            above = self._runs.get(parent) if parent is not None else None
        actor = hooks.current_actor()
        if actor is None and isinstance(metadata, dict):
            actor = next((metadata[k] for k in _ACTOR_KEYS if metadata.get(k)), None)
        if above is not None:
            run = _Run(above.plan_id, above.decision_id, actor or above.actor, time.perf_counter())
            run.place = above.place
        else:
            plan_id = hooks.current_plan_id()
            run = _Run(
                plan_id or run_id.hex,
                hooks.current_decision_id(),
                _label(actor or name, "chain"),
                time.perf_counter(),
                owns_plan=plan_id is None and parent is None,
            )
            run.place = plan_scope.place_fields(plan_id) if plan_id is not None else {}
            if run.owns_plan:
                # A plan of its own: the root of its own tree, starting now.
                run.place = {
                    "root_plan_id": run.plan_id,
                    "root_started_at": datetime.now(UTC),
                    "plan_path": [],
                }
        if run.actor is not None:
            run.actor = _label(run.actor, "chain")
        with self._lock:
            self._runs[run_id] = run
        return run

    def _end(self, run_id: uuid.UUID) -> _Run | None:
        with self._lock:
            return self._runs.pop(run_id, None)

    @property
    def emitter(self) -> Emitter:
        return hook_emitter(self._emitter)

    # -- chains and agents --------------------------------------------------------------

    def on_chain_start(
        self, serialized: Any, inputs: Any, *, run_id: uuid.UUID, **kwargs: Any
    ) -> None:
        if not first_claim(run_id):
            return
        try:
            self._start(
                run_id,
                kwargs.get("parent_run_id"),
                _name(serialized, kwargs),
                kwargs.get("metadata"),
            )
        except Exception:
            logger.warning("fleettrace: cannot follow a LangChain chain", exc_info=True)

    def on_chain_end(self, outputs: Any, *, run_id: uuid.UUID, **kwargs: Any) -> None:
        self._chain_done(run_id)

    def on_chain_error(self, error: BaseException, *, run_id: uuid.UUID, **kwargs: Any) -> None:
        self._chain_done(run_id, error)

    def _chain_done(self, run_id: uuid.UUID, error: BaseException | None = None) -> None:
        run = self._end(run_id)
        if run is None or not run.owns_plan:
            return
        try:
            elapsed_s = time.perf_counter() - run.started_s
            self.emitter.observe(
                MetricKey.PLAN_DURATION_SECONDS,
                elapsed_s,
                {"phase": hooks.TOTAL_PHASE},
                plan_id=run.plan_id,
            )
            started: datetime = run.place["root_started_at"]
            self.emitter.record(
                PlanRecord(
                    plan_id=run.plan_id,  # type: ignore[arg-type]
                    root_plan_id=run.plan_id,  # type: ignore[arg-type]
                    root_started_at=started,
                    started_at=started,
                    ended_at=started + timedelta(seconds=elapsed_s),
                    duration_ms=elapsed_s * _MS,
                    status="ok" if error is None else "error",
                    error=None if error is None else plan_scope.error_text(error),
                )
            )
        except Exception:
            logger.warning("fleettrace: cannot record a LangChain plan", exc_info=True)

    def on_agent_action(self, action: Any, *, run_id: uuid.UUID, **kwargs: Any) -> None:
        if hooks.current_decision_id() is not None:
            return  # the caller's own decision holds
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                return
            run.decision_id = uuid.uuid4().hex
        if run.plan_id is None:
            return
        try:
            self.emitter.observe(
                MetricKey.PLAN_DECISIONS_COUNT, 1, {"plan": run.plan_id}, plan_id=run.plan_id
            )
        except Exception:
            logger.warning("fleettrace: cannot record a LangChain decision", exc_info=True)

    # -- LLM calls ----------------------------------------------------------------------

    def on_chat_model_start(
        self, serialized: Any, messages: Any, *, run_id: uuid.UUID, **kwargs: Any
    ) -> None:
        self._llm_start(serialized, run_id, kwargs)

    def on_llm_start(
        self, serialized: Any, prompts: Any, *, run_id: uuid.UUID, **kwargs: Any
    ) -> None:
        self._llm_start(serialized, run_id, kwargs)

    def _llm_start(self, serialized: Any, run_id: uuid.UUID, kwargs: dict[str, Any]) -> None:
        if not first_claim(run_id):
            return  # another fleettrace handler on the same run records it
        try:
            metadata = kwargs.get("metadata") or {}
            params = kwargs.get("invocation_params") or {}
            run = self._start(
                run_id, kwargs.get("parent_run_id"), _name(serialized, kwargs), metadata
            )
            provider = self._provider or metadata.get("ls_provider") or "langchain"
            model = metadata.get("ls_model_name") or params.get("model") or params.get("model_name")
            run.call = Call(
                _label(provider, "langchain"),
                _label(model, "unknown"),
                self._emitter,
                self._on_call,
                plan_id=run.plan_id,
                decision_id=run.decision_id,
                actor=run.actor,
                place=run.place,
            )
        except Exception:
            logger.warning("fleettrace: cannot follow a LangChain LLM run", exc_info=True)

    def on_llm_new_token(self, token: Any, *, run_id: uuid.UUID, **kwargs: Any) -> None:
        with self._lock:
            run = self._runs.get(run_id)
        if run is not None and run.call is not None:
            run.call.streaming = True
            run.call.first_token()

    def on_llm_end(self, response: Any, *, run_id: uuid.UUID, **kwargs: Any) -> None:
        run = self._end(run_id)
        if run is None or run.call is None:
            return
        try:
            _read_result(response, run.call)
        except Exception:
            logger.warning("fleettrace: cannot read a LangChain LLM result", exc_info=True)
        run.call.finish()

    def on_llm_error(self, error: BaseException, *, run_id: uuid.UUID, **kwargs: Any) -> None:
        run = self._end(run_id)
        if run is not None and run.call is not None:
            run.call.finish(error)

    # -- tools --------------------------------------------------------------------------

    def on_tool_start(
        self, serialized: Any, input_str: Any, *, run_id: uuid.UUID, **kwargs: Any
    ) -> None:
        if not first_claim(run_id):
            return
        try:
            name = _name(serialized, kwargs)
            run = self._start(run_id, kwargs.get("parent_run_id"), name, kwargs.get("metadata"))
            run.tool = _label(name, "tool")
        except Exception:
            logger.warning("fleettrace: cannot follow a LangChain tool", exc_info=True)

    def on_tool_end(self, output: Any, *, run_id: uuid.UUID, **kwargs: Any) -> None:
        self._tool_done(run_id, None)

    def on_tool_error(self, error: BaseException, *, run_id: uuid.UUID, **kwargs: Any) -> None:
        self._tool_done(run_id, error)

    def _tool_done(self, run_id: uuid.UUID, error: BaseException | None) -> None:
        run = self._end(run_id)
        if run is None or run.tool is None:
            return
        outcome = "ok" if error is None else "error"
        try:
            elapsed_s = time.perf_counter() - run.started_s
            self.emitter.record(
                plan_scope.tool_call(
                    run.tool,
                    elapsed_s,
                    error,
                    plan_id=run.plan_id,
                    decision_id=run.decision_id,
                    actor=run.actor,
                    place=run.place,
                )
            )
        except Exception:
            logger.warning("fleettrace: cannot record a LangChain tool call", exc_info=True)
        try:
            elapsed_ms = elapsed_s * _MS
            labels = {"tool": run.tool}
            emitter = self.emitter
            emitter.observe(
                MetricKey.TOOL_INVOCATION_DURATION_MS, elapsed_ms, labels, plan_id=run.plan_id
            )
            emitter.observe(
                MetricKey.TOOL_ERROR_RATE, 1, {**labels, "outcome": outcome}, plan_id=run.plan_id
            )
        except Exception:
            logger.warning("fleettrace: cannot record a LangChain tool run", exc_info=True)


def _name(serialized: Any, kwargs: dict[str, Any]) -> str:
    name = kwargs.get("name")
    if isinstance(name, str) and name:
        return name
    if isinstance(serialized, dict):
        if isinstance(serialized.get("name"), str):
            return str(serialized["name"])
        ids = serialized.get("id")
        if isinstance(ids, list) and ids:
            return str(ids[-1])
    return "run"


def _read_result(response: Any, call: Call) -> None:
    """Model, usage and tool calls from an ``LLMResult``: the message's
    ``usage_metadata`` first (chat models), then ``llm_output`` (LLMs, older models)."""
    output = getattr(response, "llm_output", None) or {}
    for generations in getattr(response, "generations", None) or ():
        for generation in generations:
            message = getattr(generation, "message", None)
            if message is None:
                continue
            metadata = getattr(message, "response_metadata", None) or {}
            call.set_model(metadata.get("model_name") or metadata.get("model"))
            usage = getattr(message, "usage_metadata", None)
            if usage:
                _read_usage_metadata(usage, call)
            for tool_call in getattr(message, "tool_calls", None) or ():
                call.add_tool_call(tool_call.get("name"))
    call.set_model(output.get("model_name") or output.get("model"))
    token_usage = output.get("token_usage") or output.get("usage")
    if call.prompt_tokens is None and isinstance(token_usage, dict):
        call.prompt_tokens = tokens(
            token_usage.get("prompt_tokens", token_usage.get("input_tokens"))
        )
        call.completion_tokens = tokens(
            token_usage.get("completion_tokens", token_usage.get("output_tokens"))
        )


def _read_usage_metadata(usage: Any, call: Call) -> None:
    """LangChain's ``UsageMetadata``: ``input_tokens`` is the whole input already."""
    call.prompt_tokens = (call.prompt_tokens or 0) + (tokens(usage.get("input_tokens")) or 0)
    call.completion_tokens = (call.completion_tokens or 0) + (
        tokens(usage.get("output_tokens")) or 0
    )
    details = usage.get("input_token_details") or {}
    call.cache_read_tokens = tokens(details.get("cache_read"))
    call.cache_write_tokens = tokens(details.get("cache_creation"))
    reasoning = (usage.get("output_token_details") or {}).get("reasoning")
    call.reasoning_tokens = tokens(reasoning)
