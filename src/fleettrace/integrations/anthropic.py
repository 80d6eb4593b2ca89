"""``wrap_anthropic``: record every messages call of an Anthropic client.

    from anthropic import Anthropic
    from fleettrace.integrations import wrap_anthropic

    client = wrap_anthropic(Anthropic())

Works for ``Anthropic`` and ``AsyncAnthropic``, ``messages.create`` plain and with
``stream=True``, and the ``messages.stream()`` helper. Anthropic reports its input in
three parts (uncached input, cache reads, cache writes); ``prompt_tokens`` is their
sum, the whole input, as OpenAI and genai-prices count it. A stream's usage comes
from ``message_start`` (input and cache tokens) and ``message_delta`` (the output
count so far, and input counts when the API restates them).

Like the OpenAI integration, this imports nothing from ``anthropic``.
"""

from __future__ import annotations

from typing import Any, TypeVar

from fleettrace.emitter import Emitter
from fleettrace.integrations._calls import Call, CallObserver, tokens
from fleettrace.integrations._clients import Wrapping, wrap_client

C = TypeVar("C")

_TOOL_BLOCKS = frozenset({"tool_use", "server_tool_use", "mcp_tool_use"})


class AnthropicAdapter:
    """The messages API, as the Anthropic SDK hands it over."""

    def model_of(self, options: Any) -> str | None:
        path = str(options.url).split("?", 1)[0]
        if options.method.lower() != "post" or not path.endswith("/v1/messages"):
            return None
        body = options.json_data
        model = body.get("model") if isinstance(body, dict) else None
        return model if isinstance(model, str) and model else "unknown"

    def prepare(self, options: Any, call: Call) -> Any:
        call.streaming = options.json_data.get("stream") is True
        return options

    def read(self, result: Any, call: Call) -> None:
        call.set_model(getattr(result, "model", None))
        _read_usage(getattr(result, "usage", None), call)
        for block in getattr(result, "content", None) or ():
            if getattr(block, "type", None) in _TOOL_BLOCKS:
                call.add_tool_call(getattr(block, "name", None))

    def event(self, event: Any, call: Call) -> None:
        kind = getattr(event, "type", None)
        if kind == "message_start":
            message = event.message
            call.set_model(getattr(message, "model", None))
            _read_usage(getattr(message, "usage", None), call)
        elif kind == "message_delta":
            _read_usage(getattr(event, "usage", None), call)
        elif kind == "content_block_start":
            block = event.content_block
            if getattr(block, "type", None) in _TOOL_BLOCKS:
                call.add_tool_call(getattr(block, "name", None))

    def hidden(self, event: Any, call: Call) -> bool:
        return False  # nothing is asked for beyond what the caller asked

    def unasked(self, data: Any) -> bool:
        return False

    def take(self, data: Any, call: Call) -> None:
        return None


def _read_usage(usage: Any, call: Call) -> None:
    """Take the counts ``usage`` states; a count it leaves out keeps its earlier value
    (``message_delta`` may restate only the output)."""
    if usage is None:
        return
    parts = {
        "input": tokens(getattr(usage, "input_tokens", None)),
        "read": tokens(getattr(usage, "cache_read_input_tokens", None)),
        "write": tokens(getattr(usage, "cache_creation_input_tokens", None)),
    }
    if parts["read"] is not None:
        call.cache_read_tokens = parts["read"]
    if parts["write"] is not None:
        call.cache_write_tokens = parts["write"]
    if parts["input"] is not None:
        call.prompt_tokens = (
            parts["input"] + (call.cache_read_tokens or 0) + (call.cache_write_tokens or 0)
        )
    output = tokens(getattr(usage, "output_tokens", None))
    if output is not None:
        call.completion_tokens = output
    details = getattr(usage, "output_tokens_details", None)
    thinking = tokens(getattr(details, "thinking_tokens", None))
    if thinking is not None:
        call.reasoning_tokens = thinking


def wrap_anthropic(
    client: C,
    *,
    provider: str = "anthropic",
    emitter: Emitter | None = None,
    on_call: CallObserver | None = None,
    hash_context: bool = False,
) -> C:
    """Record the messages calls ``client`` (``Anthropic`` or ``AsyncAnthropic``) makes;
    returns it. Arguments as for :func:`~fleettrace.integrations.wrap_openai`
    (``hash_context`` hashes ``system`` and ``messages``)."""
    wrapping = Wrapping(provider, AnthropicAdapter(), emitter, on_call, hash_context)
    return wrap_client(client, wrapping)
