"""Tags, metadata, user, session and time to first token forwarded: LangSmith runs
through the real ``langsmith`` client to the local LangSmith-compatible server, and
OTLP spans to the strict local receiver (which refuses a ``gen_ai.*`` name the
semantic conventions do not define)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import redis
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.semconv._incubating.attributes import session_attributes, user_attributes

from fleettrace.keys import Keys
from fleettrace_worker.forward.langsmith.runs import llm_run
from tests.factories import add_traces, llm_trace
from tests.langsmith_server import API_KEY, LangSmithServer, make_loop, settings_for
from tests.otlp_receiver import OtlpReceiver
from tests.test_otlp import attrs
from tests.test_otlp import make_loop as make_otlp_loop
from tests.test_otlp import settings_for as otlp_settings_for

ATTRIBUTES = {
    "tags": ["prod", "eu"],
    "metadata": {"team": "search", "tier": 2, "ratio": 0.5, "beta": True, "plan_id": "mine"},
    "user_id": "user-1",
    "session_id": "session-1",
    "ttft_ms": 250.0,
}


@pytest.fixture
def langsmith() -> Iterator[LangSmithServer]:
    with LangSmithServer(api_key=API_KEY) as srv:
        yield srv


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as srv:
        yield srv


def test_langsmith_runs_carry_the_tags_and_metadata(
    langsmith: LangSmithServer, redis_client: redis.Redis, keys: Keys
) -> None:
    tagged = llm_trace(plan_id="plan-a", actor="planner", **ATTRIBUTES)
    plain = llm_trace(plan_id=None, actor=None)
    add_traces(redis_client, keys, [tagged, plain])
    make_loop(redis_client, keys, settings_for(langsmith)).run(threading.Event())
    run = langsmith.recorded.runs[str(tagged.trace_id)]
    assert run["tags"] == ["actor:planner", "prod", "eu"]
    metadata = run["extra"]["metadata"]
    assert {k: metadata[k] for k in ("team", "tier", "ratio", "beta")} == {
        "team": "search", "tier": 2, "ratio": 0.5, "beta": True,
    }  # fmt: skip
    assert metadata["plan_id"] == "plan-a"  # fleettrace's own key wins a clash
    assert (metadata["user_id"], metadata["session_id"], metadata["ttft_ms"]) == (
        "user-1", "session-1", 250.0,
    )  # fmt: skip
    other = langsmith.recorded.runs[str(plain.trace_id)]
    assert other.get("tags") in (None, [])
    assert other["extra"]["metadata"]["user_id"] is None


def test_a_run_without_attributes_has_the_same_keys_as_before_plus_the_ids() -> None:
    run = llm_run(llm_trace(), "p")
    assert run["tags"] == []
    assert {"user_id", "session_id", "ttft_ms"} <= set(run["extra"]["metadata"])


def test_otlp_spans_carry_them_as_attributes_the_conventions_know(
    receiver: OtlpReceiver, redis_client: redis.Redis, keys: Keys
) -> None:
    record = llm_trace(plan_id=None, actor=None, **ATTRIBUTES)
    add_traces(redis_client, keys, [record, llm_trace(plan_id=None, actor=None)])
    loop = make_otlp_loop(redis_client, keys, otlp_settings_for(receiver))
    loop.run(threading.Event())
    loop.close()
    spans = [s for s in receiver.spans() if s.kind == Span.SpanKind.SPAN_KIND_CLIENT]
    by_id = {attrs(s)["fleettrace.trace_id"]: attrs(s) for s in spans}
    values = by_id[str(record.trace_id)]
    assert values[user_attributes.USER_ID] == "user-1"
    assert values[session_attributes.SESSION_ID] == "session-1"
    assert values["gen_ai.response.time_to_first_chunk"] == 0.25
    assert [v.string_value for v in values["fleettrace.tags"].values] == ["prod", "eu"]  # type: ignore[attr-defined]
    assert values["fleettrace.metadata.team"] == "search"
    assert values["fleettrace.metadata.tier"] == 2
    assert values["fleettrace.metadata.ratio"] == 0.5
    assert values["fleettrace.metadata.beta"] is True
    assert values["fleettrace.metadata.plan_id"] == "mine"  # under its own prefix, no clash
    bare = next(v for k, v in by_id.items() if k != str(record.trace_id))
    assert not {k for k in bare if k.startswith(("user.", "session.", "fleettrace.metadata."))}
    assert "fleettrace.tags" not in bare
