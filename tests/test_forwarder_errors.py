"""The LangSmith sender and the translation of its errors: what is deferred, what is
refused for good, what names the key variable, and the forms of Retry-After."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
import requests
from langsmith import utils as ls_utils

from fleettrace_worker.errors import ForwardingDeferred, ForwardingRejected, ForwardingUnauthorized
from fleettrace_worker.forward.langsmith.delivery import RunSender, classify, parse_retry_after
from fleettrace_worker.forward.langsmith.runs import llm_run
from fleettrace_worker.forward.langsmith.settings import LangSmithSettings
from tests.factories import RUN_CALL, llm_trace
from tests.langsmith_server import (
    API_KEY,
    Fault,
    LangSmithServer,
    langsmith_server,  # noqa: F401 (the fixture "server")
    settings_for,
)


def test_the_sender_uses_post_runs_and_raises_on_failure(server: LangSmithServer) -> None:
    sender = RunSender(settings_for(server))
    assert "***" in repr(sender)
    assert API_KEY not in repr(sender)
    record = llm_trace(RUN_CALL, plan_id=None)
    sender.send(llm_run(record, "fleet"))
    assert ("POST", "/runs") in server.recorded.requests
    server.inject(Fault("status", status=503, retry_after="2", count=1))
    with pytest.raises(ForwardingDeferred) as deferred:
        sender.send(llm_run(llm_trace(RUN_CALL, plan_id=None), "fleet"))
    assert deferred.value.retry_after_s == 2.0
    server.api_key = "another-key"
    with pytest.raises(ForwardingUnauthorized, match=r"HTTP 401.*LANGSMITH_API_KEY") as refused:
        sender.send(llm_run(llm_trace(RUN_CALL, plan_id=None), "fleet"))
    assert API_KEY not in str(refused.value) and "another-key" not in str(refused.value)
    sender.close()


def test_an_unreachable_langsmith_is_deferred() -> None:
    settings = LangSmithSettings(
        enabled=True, endpoint="http://127.0.0.1:9", api_key=API_KEY, request_timeout_s=1.0
    )
    with pytest.raises(ForwardingDeferred, match="cannot connect") as error:
        RunSender(settings).send(
            {"id": uuid.uuid4(), "name": "x", "inputs": {}, "run_type": "llm", "session_name": "p"}
        )
    assert API_KEY[:8] not in str(error.value)


@pytest.mark.parametrize(
    ("error", "kind", "text"),
    [
        (requests.ReadTimeout("slow"), ForwardingDeferred, "did not answer in time"),
        (requests.ConnectionError("refused"), ForwardingDeferred, "cannot connect"),
        (ls_utils.LangSmithConnectionError("x"), ForwardingDeferred, "cannot connect"),
        (requests.TooManyRedirects("loop"), ForwardingDeferred, "request to LangSmith failed"),
        (ls_utils.LangSmithError("odd"), ForwardingDeferred, "LangSmithError"),
    ],
)
def test_errors_without_an_answer_are_deferred(
    error: Exception, kind: type[Exception], text: str
) -> None:
    classified = classify(error, run_id="r1")
    assert isinstance(classified, kind)
    assert text in str(classified)


def _http_error(status: int, headers: dict[str, str] | None = None) -> Exception:
    response = requests.Response()
    response.status_code = status
    response._content = b"  the\n answer  "
    response.headers.update(headers or {})
    try:
        raise requests.HTTPError("boom", response=response)
    except requests.HTTPError:
        try:
            raise ls_utils.LangSmithError("wrapped")
        except ls_utils.LangSmithError as wrapped:
            return wrapped


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, ForwardingRejected),
        (404, ForwardingRejected),
        (408, ForwardingDeferred),
        (425, ForwardingDeferred),
        (429, ForwardingDeferred),
        (500, ForwardingDeferred),
        (504, ForwardingDeferred),
    ],
)
def test_answers_are_classified_by_status(status: int, kind: type[Exception]) -> None:
    classified = classify(_http_error(status, {"Retry-After": "5"}), run_id="r1")
    assert isinstance(classified, kind)
    assert str(classified) == f"LangSmith answered {status} for run r1: the answer"
    if isinstance(classified, ForwardingDeferred):
        assert classified.retry_after_s == 5.0


@pytest.mark.parametrize("status", [401, 403])
def test_key_refusals_are_one_message_naming_the_variable(status: int) -> None:
    first = classify(_http_error(status), run_id="r1")
    second = classify(_http_error(status), run_id="r2")
    assert isinstance(first, ForwardingUnauthorized)
    assert isinstance(first, ForwardingDeferred)  # retried, never a dead letter
    assert str(first) == str(second)  # the loop logs a new message only
    assert f"HTTP {status}" in str(first) and "LANGSMITH_API_KEY" in str(first)


def test_retry_after_forms() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after(None) is None
    assert parse_retry_after("  ") is None
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("inf") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("2026-01-01T12:00:30", now=now) is None
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:10 -0000", now=now) == 10.0
