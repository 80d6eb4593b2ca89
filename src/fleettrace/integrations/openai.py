"""``wrap_openai``: record every chat completion and Responses call of an OpenAI client.

    from openai import OpenAI
    from fleettrace.integrations import wrap_openai

    client = wrap_openai(OpenAI())

Works for ``OpenAI`` and ``AsyncOpenAI``, plain and streamed calls, the ``stream()``
and ``parse()`` helpers, and clients pointed at OpenAI-compatible servers
(``base_url``; name the provider with ``provider=``). A streamed chat completion asks
the API for usage (``stream_options={"include_usage": true}``) unless the caller set
``stream_options``; the usage-only chunk that then arrives is hidden from the caller.

This module imports nothing from ``openai``: it reads the client's objects by
attribute, so importing it costs nothing and any 3.x client works.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, TypeVar

from fleettrace.emitter import Emitter
from fleettrace.integrations._calls import Call, CallObserver, tokens
from fleettrace.integrations._clients import Wrapping, wrap_client

_CHAT: Final = "/chat/completions"
_RESPONSES: Final = "/responses"
#: Responses stream events that carry the finished response (and its usage).
_FINAL_EVENTS: Final = frozenset({"response.completed", "response.incomplete", "response.failed"})

C = TypeVar("C")


class OpenAIAdapter:
    """Chat completions and Responses, as the OpenAI SDK hands them over."""

    def model_of(self, options: Any) -> str | None:
        url = options.url
        if options.method.lower() != "post" or not (url.endswith((_CHAT, _RESPONSES))):
            return None
        body = options.json_data
        if not isinstance(body, Mapping):
            return None
        model = body.get("model")
        return model if isinstance(model, str) and model else "unknown"

    def prepare(self, options: Any, call: Call) -> Any:
        body = options.json_data
        call.streaming = body.get("stream") is True
        if call.streaming and options.url.endswith(_CHAT) and body.get("stream_options") is None:
            options = options.model_copy()
            options.json_data = {**body, "stream_options": {"include_usage": True}}
            call.hide_usage_chunk = True
        return options

    def read(self, result: Any, call: Call) -> None:
        call.set_model(getattr(result, "model", None))
        usage = getattr(result, "usage", None)
        kind = getattr(result, "object", None)
        # ``object`` first: a chat completion has it, and no ``output`` (a name a
        # pydantic object lacks costs an exception).
        if kind == "response" or (kind != "chat.completion" and hasattr(result, "output")):
            _read_response_usage(usage, call)
            for item in getattr(result, "output", None) or ():
                if getattr(item, "type", None) in ("function_call", "custom_tool_call"):
                    call.add_tool_call(getattr(item, "name", None))
            return
        _read_chat_usage(usage, call)
        for choice in getattr(result, "choices", None) or ():
            message = getattr(choice, "message", None)
            for tool_call in getattr(message, "tool_calls", None) or ():
                call.add_tool_call(_tool_name(tool_call))

    def event(self, event: Any, call: Call) -> None:
        # Runs on every chunk: only attributes every chat chunk has are read (a name
        # a pydantic object lacks costs an exception), and usage only when it is there.
        choices = getattr(event, "choices", None)
        if choices is None:  # a Responses stream event
            if getattr(event, "type", None) in _FINAL_EVENTS:
                self.read(event.response, call)
            return
        model = getattr(event, "model", None)
        if model != call.model:
            call.set_model(model)
        for choice in choices:
            tool_calls = getattr(getattr(choice, "delta", None), "tool_calls", None)
            if tool_calls:
                for tool_call in tool_calls:
                    call.add_tool_call(_tool_name(tool_call))
        usage = getattr(event, "usage", None)
        if usage is not None:
            _read_chat_usage(usage, call)

    def hidden(self, event: Any, call: Call) -> bool:
        """The usage-only chunk (no choices) of a stream whose usage only fleettrace
        asked for."""
        return (
            call.hide_usage_chunk
            and getattr(event, "usage", None) is not None
            and not getattr(event, "choices", None)
        )

    def unasked(self, data: Any) -> bool:
        """The JSON of a usage-only chunk (no choices): hidden when only fleettrace
        asked for it."""
        return type(data) is dict and data.get("usage") is not None and not data.get("choices")

    def take(self, data: Any, call: Call) -> None:
        call.set_model(data.get("model"))
        usage = data["usage"]
        call.prompt_tokens = tokens(usage.get("prompt_tokens"))
        call.completion_tokens = tokens(usage.get("completion_tokens"))
        prompt_details = usage.get("prompt_tokens_details")
        if isinstance(prompt_details, dict):
            call.cache_read_tokens = tokens(prompt_details.get("cached_tokens"))
        completion_details = usage.get("completion_tokens_details")
        if isinstance(completion_details, dict):
            call.reasoning_tokens = tokens(completion_details.get("reasoning_tokens"))


def _tool_name(tool_call: Any) -> object:
    function = getattr(tool_call, "function", None) or getattr(tool_call, "custom", None)
    return getattr(function, "name", None)


def _read_chat_usage(usage: Any, call: Call) -> None:
    if usage is None:
        return
    call.prompt_tokens = tokens(getattr(usage, "prompt_tokens", None))
    call.completion_tokens = tokens(getattr(usage, "completion_tokens", None))
    prompt_details = getattr(usage, "prompt_tokens_details", None)
    call.cache_read_tokens = tokens(getattr(prompt_details, "cached_tokens", None))
    completion_details = getattr(usage, "completion_tokens_details", None)
    call.reasoning_tokens = tokens(getattr(completion_details, "reasoning_tokens", None))


def _read_response_usage(usage: Any, call: Call) -> None:
    if usage is None:
        return
    call.prompt_tokens = tokens(getattr(usage, "input_tokens", None))
    call.completion_tokens = tokens(getattr(usage, "output_tokens", None))
    input_details = getattr(usage, "input_tokens_details", None)
    call.cache_read_tokens = tokens(getattr(input_details, "cached_tokens", None))
    output_details = getattr(usage, "output_tokens_details", None)
    call.reasoning_tokens = tokens(getattr(output_details, "reasoning_tokens", None))


def wrap_openai(
    client: C,
    *,
    provider: str = "openai",
    emitter: Emitter | None = None,
    on_call: CallObserver | None = None,
    hash_context: bool = False,
) -> C:
    """Record the LLM calls ``client`` (``OpenAI`` or ``AsyncOpenAI``) makes; returns it.

    ``provider`` names the service for OpenAI-compatible servers (``"vllm"``,
    ``"azure"``...). ``emitter`` defaults to the process's default emitter.
    ``on_call`` is called with each finished :class:`~fleettrace.integrations.Call`,
    which also holds what the record cannot carry yet (cache and reasoning tokens,
    time to first token). ``hash_context=True`` records ``context_hash``, the SHA-256
    of the request's ``messages`` (chat) or ``instructions`` and ``input``
    (Responses), so that calls sending the same context can be grouped; the text is
    never recorded. Wrapping a wrapped client changes nothing; an object that is
    not an SDK client raises ``TypeError`` here, at setup.
    """
    wrapping = Wrapping(provider, OpenAIAdapter(), emitter, on_call, hash_context)
    return wrap_client(client, wrapping)
