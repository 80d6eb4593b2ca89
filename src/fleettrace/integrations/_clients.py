"""Instrumenting a provider SDK client (OpenAI's and Anthropic's share one design).

Both SDKs send every API call through the client's ``request`` method and build each
HTTP attempt with ``_build_request(options, retries_taken=N)``. Wrapping sets two
instance attributes that shadow those methods on that one client (its class and
other clients are untouched): ``request`` times the call, lets the provider adapter
adjust a streaming request, and reads the answer; ``_build_request`` notes the retry
number of each attempt, so the count is the client's own, not a guess. Every resource
(``chat.completions``, ``responses``, ``messages``, their ``stream()`` helpers)
reaches the API through ``request``, so one hook covers them all.

A stream is returned as the same object the client made: its ``_iterator`` (what
``__iter__`` and ``__next__`` read) is replaced by one that passes every event
through, except a usage-only chunk the caller did not ask for, and records the call
when the stream is exhausted, fails, is closed or is garbage collected.

``unwrap`` deletes the instance attributes, which restores the class's methods.
"""

from __future__ import annotations

import functools
import inspect
import logging
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

from fleettrace.emitter import Emitter
from fleettrace.integrations._calls import Call, CallObserver, context_hash, guarded

#: The attribute that marks a wrapped client and holds how it was wrapped.
MARK: Final = "_fleettrace_wrapping"
_PATCHED: Final = ("request", "_build_request", "_process_response_data", "copy", "with_options")
RAW_RESPONSE_HEADER: Final = "X-Stainless-Raw-Response"

_current: ContextVar[Call | None] = ContextVar("fleettrace_integration_call", default=None)

C = TypeVar("C")

logger = logging.getLogger("fleettrace.integrations")


class Adapter(Protocol):
    """What one provider's integration knows about its API."""

    def model_of(self, options: Any) -> str | None:
        """The requested model when ``options`` is an LLM call to record, else None."""

    def prepare(self, options: Any, call: Call) -> Any:
        """Options to send instead (a streaming request may ask for usage)."""

    def read(self, result: Any, call: Call) -> None:
        """Take model, usage and tool calls from a complete answer."""

    def event(self, event: Any, call: Call) -> None:
        """Take what a stream event says."""

    def hidden(self, event: Any, call: Call) -> bool:
        """True for an event the caller did not ask for (kept apart from ``event``, so
        that a failure to read an event never shows the caller one it should not see)."""

    def unasked(self, data: Any) -> bool:
        """True for the decoded JSON of a stream event that is hidden when the caller
        did not ask for it (see ``take``); checked on every event, so cheap."""

    def take(self, data: Any, call: Call) -> None:
        """Read an unasked event from its decoded JSON: the client never builds its
        object, which the caller would not see anyway."""


@dataclass(frozen=True, slots=True)
class Wrapping:
    provider: str
    adapter: Adapter
    emitter: Emitter | None
    observer: CallObserver | None
    #: Hash the request's context into ``context_hash`` (the caller's opt-in).
    hash_context: bool = False


def is_wrapped(client: object) -> bool:
    return MARK in vars(client)


def wrap_client(client: C, wrapping: Wrapping, *, is_async: bool | None = None) -> C:
    """Instrument ``client`` in place and return it; a wrapped client is left as it is.

    Raises ``TypeError`` for an object that is not an SDK client (a setup mistake, made
    once where the client is built, not on an agent's call).
    """
    request = getattr(client, "request", None)
    if not callable(request) or not hasattr(client, "__dict__"):
        raise TypeError(
            f"fleettrace can wrap an OpenAI or Anthropic SDK client, not {type(client).__name__}"
        )
    if is_wrapped(client):
        return client
    if is_async is None:
        is_async = inspect.iscoroutinefunction(request)
    state = vars(client)
    build = getattr(client, "_build_request", None)
    if build is not None:  # an SDK without it: calls are recorded with retry_count 0

        def build_request(options: Any, *, retries_taken: int = 0) -> Any:
            call = _current.get()
            if call is not None:
                call.retries = retries_taken
            return build(options, retries_taken=retries_taken)

        state["_build_request"] = build_request
    state["request"] = (_async_request if is_async else _sync_request)(request, wrapping)
    process = getattr(client, "_process_response_data", None)
    if process is not None:
        state["_process_response_data"] = _taking_unasked(process, wrapping.adapter)
    for name in ("copy", "with_options"):
        state[name] = _wrap_copies(getattr(client, name), wrapping, is_async)
    state[MARK] = wrapping
    return client


def unwrap(client: C) -> C:
    """Restore a wrapped client's own methods; a client never wrapped is returned as is."""
    state = vars(client)
    if MARK in state:
        for name in (*_PATCHED, MARK):
            state.pop(name, None)
    return client


def _wrap_copies(method: Callable[..., Any], wrapping: Wrapping, is_async: bool) -> Any:
    """``with_options()`` and ``copy()`` make a new client: it is wrapped the same way."""

    @functools.wraps(method)
    def copy(*args: Any, **kwargs: Any) -> Any:
        new = method(*args, **kwargs)
        guarded("wrapping a copied client", lambda: wrap_client(new, wrapping, is_async=is_async))
        return new

    return copy


def _begin(wrapping: Wrapping, options: Any) -> tuple[Call | None, Any]:
    """A call for a request to record, and the options to send; (None, options) else."""
    try:
        headers = getattr(options, "headers", None)  # falsy when not given
        if headers and isinstance(headers, Mapping) and headers.get(RAW_RESPONSE_HEADER):
            # with_raw_response / with_streaming_response: the caller reads the body
            # itself, so the answer cannot be read here without changing it.
            return None, options
        model = wrapping.adapter.model_of(options)
        if model is None:
            return None, options
        call = Call(wrapping.provider, model, wrapping.emitter, wrapping.observer)
        if wrapping.hash_context:
            call.context_hash = guarded("hashing the request", context_hash, options.json_data)
        return call, wrapping.adapter.prepare(options, call)
    except Exception:
        logger.debug("fleettrace integration: cannot follow this request", exc_info=True)
        return None, options


def _sync_request(request: Callable[..., Any], wrapping: Wrapping) -> Callable[..., Any]:
    @functools.wraps(request)
    def wrapped(cast_to: Any, options: Any, *args: Any, **kwargs: Any) -> Any:
        call, options = _begin(wrapping, options)
        if call is None:
            return request(cast_to, options, *args, **kwargs)
        # Inline rather than a context manager (a generator per call): ``call`` is the
        # current one while its request runs (the SDK's retries are counted on it),
        # and is finished with the error if the request raises.
        token = _current.set(call)
        try:
            result = request(cast_to, options, *args, **kwargs)
        except BaseException as error:
            call.finish(error)
            raise
        finally:
            _current.reset(token)
        return _after(result, call, wrapping.adapter)

    return wrapped


def _async_request(request: Callable[..., Any], wrapping: Wrapping) -> Callable[..., Any]:
    @functools.wraps(request)
    async def wrapped(cast_to: Any, options: Any, *args: Any, **kwargs: Any) -> Any:
        call, options = _begin(wrapping, options)
        if call is None:
            return await request(cast_to, options, *args, **kwargs)
        # Inline rather than a context manager (a generator per call): ``call`` is the
        # current one while its request runs (the SDK's retries are counted on it),
        # and is finished with the error if the request raises.
        token = _current.set(call)
        try:
            result = await request(cast_to, options, *args, **kwargs)
        except BaseException as error:
            call.finish(error)
            raise
        finally:
            _current.reset(token)
        return _after(result, call, wrapping.adapter)

    return wrapped


def _after(result: Any, call: Call, adapter: Adapter) -> Any:
    """Read a complete answer and record it, or follow a stream; return ``result``."""
    if call.streaming:
        inner = getattr(result, "_iterator", None)
        if inner is not None and hasattr(result, "response"):
            guarded("following a stream", _follow, result, inner, call, adapter)
            return result
    guarded("reading an answer", adapter.read, result, call)
    call.finish()
    return result


#: Streams whose unasked events fleettrace reads itself (by their HTTP response, which
#: the client hands to ``_process_response_data`` with each event's JSON).
_taking: weakref.WeakKeyDictionary[Any, Call] = weakref.WeakKeyDictionary()
#: What ``_process_response_data`` returns for an event taken: the stream skips it.
TAKEN: Final = object()


def _taking_unasked(process: Callable[..., Any], adapter: Adapter) -> Callable[..., Any]:
    """The client's ``_process_response_data`` (which builds each stream event's object
    from its JSON), except for the events of a followed stream that only fleettrace
    asked for: those are read from their JSON and never built (building one costs more
    than everything else the wrapper does for the call)."""

    @functools.wraps(process)
    def process_response_data(*args: Any, **kwargs: Any) -> Any:
        data = kwargs.get("data")
        try:
            call = adapter.unasked(data) and _taking.get(kwargs.get("response"))
        except TypeError:  # a response that cannot be weakly referenced: none of ours
            call = None
        if not call:
            return process(*args, **kwargs)
        try:
            adapter.take(data, call)
        except Exception:
            logger.debug("fleettrace integration: cannot read a stream event", exc_info=True)
        return TAKEN

    return process_response_data


def _follow(stream: Any, inner: Any, call: Call, adapter: Adapter) -> None:
    if call.hide_usage_chunk:
        _taking[stream.response] = call
    if hasattr(inner, "__anext__"):
        stream._iterator = _async_events(inner, call, adapter)
        close = stream.close

        async def aclose() -> None:
            try:
                await close()
            finally:
                call.finish()

        stream.close = aclose
    else:
        stream._iterator = _events(inner, call, adapter)
        sync_close = stream.close

        def close_stream() -> None:
            try:
                sync_close()
            finally:
                call.finish()

        stream.close = close_stream
    # A stream dropped without being read to its end or closed is recorded when it is
    # collected. The finalizer holds the call, never the stream; at interpreter exit
    # the emitter is closing, so a stream still alive then is not recorded.
    weakref.finalize(stream, call.finish).atexit = False


def _seen(event: Any, call: Call, adapter: Adapter) -> bool:
    """Note one event; True hides it. Bookkeeping errors never reach the caller.

    Runs on every event of a stream: ``ttft_ms`` is taken at the first only, and the
    adapter reads only what can carry the call's model, usage or tool calls."""
    if call.ttft_ms is None:
        call.first_token()
    try:
        adapter.event(event, call)
    except Exception:
        logger.debug("fleettrace integration: cannot read a stream event", exc_info=True)
    if not call.hide_usage_chunk:
        return False
    try:
        return adapter.hidden(event, call)
    except Exception:
        logger.debug("fleettrace integration: cannot judge a stream event", exc_info=True)
        return False


def _events(inner: Iterator[Any], call: Call, adapter: Adapter) -> Iterator[Any]:
    """The stream's events as the caller reads them; ``call`` ends however the stream
    does: read to the end or closed early (the caller stopped reading: not an error),
    or failed with the stream's error."""
    try:
        for event in inner:
            if event is not TAKEN and not _seen(event, call, adapter):
                yield event
    except GeneratorExit:
        call.finish()
        raise
    except BaseException as error:
        call.finish(error)
        raise
    call.finish()


async def _async_events(inner: AsyncIterator[Any], call: Call, adapter: Adapter) -> Any:
    try:
        async for event in inner:
            if event is not TAKEN and not _seen(event, call, adapter):
                yield event
    except GeneratorExit:
        call.finish()
        raise
    except BaseException as error:
        call.finish(error)
        raise
    call.finish()
