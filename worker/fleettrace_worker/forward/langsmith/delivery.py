"""Delivering one run to LangSmith and saying plainly whether it arrived.

The ``langsmith`` client's batch, multipart and background paths log a warning and
drop runs they could not send; only ``create_run`` without auto-batching
(``POST /runs``) raises. Its urllib3 adapter would also retry on its own, honouring
a Retry-After of any length inside one call; it is given no retries here, so the
forwarder's loop decides when to try again and for how long.

This module is the one place where ``langsmith`` and ``requests`` errors are
translated into :class:`ForwardingDeferred` (try again later),
:class:`ForwardingUnauthorized` (401/403: the API key is wrong or missing; a
configuration problem, retried, never a dead letter) and
:class:`ForwardingRejected` (LangSmith refused the run for good). Messages are
built from the status and the answer's text; the client's own messages carry part
of the API key and are never passed on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

import requests
from langsmith import Client
from langsmith import utils as ls_utils
from urllib3.util.retry import Retry

from fleettrace_worker.errors import ForwardingDeferred, ForwardingRejected, ForwardingUnauthorized
from fleettrace_worker.forward.langsmith.settings import LangSmithSettings
from fleettrace_worker.forward.retrywindow import parse_retry_after

__all__ = ["RunSender", "classify", "make_client", "parse_retry_after", "unauthorized_message"]

#: Answers worth another try: rate limited, request timeout, too early, server errors.
_RETRYABLE_4XX: Final = frozenset((408, 425, 429))
#: Answers about the API key, not the run: wrong or missing key, or not allowed.
_AUTH_4XX: Final = frozenset((401, 403))
_SERVER_ERROR: Final = 500
_ANSWER_CHARS: Final = 300


def _no_retries() -> Retry:
    return Retry(total=0, connect=0, read=0, status=0, redirect=0, raise_on_status=False)


def make_client(settings: LangSmithSettings) -> Client:
    timeout_ms = max(1, math.ceil(settings.request_timeout_s * 1000))
    return Client(
        api_url=settings.endpoint,
        api_key=settings.api_key,
        auto_batch_tracing=False,
        retry_config=_no_retries(),
        timeout_ms=(timeout_ms, timeout_ms),
        tracing_sampling_rate=1.0,
        omit_traced_runtime_info=True,
        info={},
    )


def _response_of(error: BaseException) -> requests.Response | None:
    """The HTTP answer behind a ``langsmith`` error: it raises its own error types
    inside the handler of ``requests.HTTPError``, which stays on the chain."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, requests.HTTPError) and seen.response is not None:
            return seen.response
        seen = seen.__cause__ or seen.__context__
    return None


def _answer_text(response: requests.Response) -> str:
    text = " ".join(response.text.split())
    return text[:_ANSWER_CHARS]


def unauthorized_message(status: int) -> str:
    return (
        f"LangSmith refused the API key (HTTP {status}): check LANGSMITH_API_KEY; "
        "runs stay pending until it is accepted"
    )


def classify(error: BaseException, *, run_id: object) -> ForwardingDeferred | ForwardingRejected:
    """Turn whatever sending one run raised into a fleettrace error."""
    response = _response_of(error)
    if response is not None:
        status = response.status_code
        answer = _answer_text(response)
        if status in _AUTH_4XX:
            # The same words for every run, so the loop says it once, not once a run.
            return ForwardingUnauthorized(unauthorized_message(status))
        if status in _RETRYABLE_4XX or status >= _SERVER_ERROR:
            retry_after_s = parse_retry_after(response.headers.get("Retry-After"))
            return ForwardingDeferred(
                f"LangSmith answered {status} for run {run_id}: {answer}", retry_after_s
            )
        return ForwardingRejected(f"LangSmith answered {status} for run {run_id}: {answer}")
    if isinstance(error, requests.Timeout):
        return ForwardingDeferred(f"LangSmith did not answer in time for run {run_id}")
    if isinstance(error, (requests.ConnectionError, ls_utils.LangSmithConnectionError)):
        return ForwardingDeferred(f"cannot connect to LangSmith for run {run_id}")
    if isinstance(error, requests.RequestException):
        return ForwardingDeferred(f"request to LangSmith failed for run {run_id}")
    # A langsmith error without an answer behind it; we cannot tell why, so keep trying.
    return ForwardingDeferred(f"LangSmith client failed for run {run_id}: {type(error).__name__}")


class RunSender:
    """Posts runs one by one and raises unless LangSmith took each (2xx or 409)."""

    def __init__(self, settings: LangSmithSettings, client: Client | None = None) -> None:
        self.settings = settings
        self.client = client if client is not None else make_client(settings)

    def __repr__(self) -> str:
        return f"RunSender({self.settings!r})"

    def send(self, run: Mapping[str, Any]) -> None:
        """Create the run, or update it when it is marked ``patch`` (a plan's end
        record: its real start and end on a run made earlier)."""
        body = dict(run)
        name = body.pop("name")
        inputs = body.pop("inputs")
        run_type = body.pop("run_type")
        project = body.pop("session_name")
        try:
            if body.pop("patch", False):
                self.client.update_run(
                    body["id"],
                    name=name,
                    run_type=run_type,
                    start_time=body.get("start_time"),
                    end_time=body.get("end_time"),
                    error=body.get("error"),
                    outputs=body.get("outputs"),
                    trace_id=body.get("trace_id"),
                    dotted_order=body.get("dotted_order"),
                    parent_run_id=body.get("parent_run_id"),
                    session_name=project,
                )
                return
            self.client.create_run(name, inputs, run_type, project_name=project, **body)
        except (ls_utils.LangSmithError, requests.RequestException) as error:
            raise classify(error, run_id=run["id"]) from None

    def close(self) -> None:
        """Close the HTTP session and drop the client's exit hook (which would keep the
        session alive until the process ends). Nothing is buffered: ``timeout=0``."""
        self.client.close(timeout=0)
