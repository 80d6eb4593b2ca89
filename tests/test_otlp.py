"""The ``otlp`` group against the real Redis and a strict local OTLP/HTTP receiver."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import redis
import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from fleettrace.codec import Kind, encode_lines, new_batch_id
from fleettrace.errors import ConfigurationError
from fleettrace.keys import Keys
from fleettrace.model import LLMTrace
from fleettrace_worker.forward.otlp.group import OtlpLoop, loop_settings
from fleettrace_worker.forward.otlp.settings import OtlpSettings, parse_headers
from fleettrace_worker.forward.otlp.spans import COST_ATTRIBUTE, export_request, llm_span_id
from fleettrace_worker.keys import OTLP_GROUP
from fleettrace_worker.stream.consumer import Consumer
from fleettrace_worker.stream.deadletter import list_dead_letters, replay_dead_letters
from tests.factories import add_traces, llm_trace
from tests.otlp_receiver import GENAI_NAMES, Fault, OtlpReceiver

SECRET = "sk-lf-0123456789abcdef"


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as srv:
        yield srv


def settings_for(receiver: OtlpReceiver, **overrides: object) -> OtlpSettings:
    values: dict[str, object] = {
        "endpoint": receiver.traces_url,
        "headers": {"Authorization": f"Basic {SECRET}"},
        "timeout_s": 2.0,
        "retry_for_s": 60.0,
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.2,
    }
    values.update(overrides)
    return OtlpSettings(**values)  # type: ignore[arg-type]


def make_loop(client: redis.Redis, keys: Keys, settings: OtlpSettings) -> OtlpLoop:
    consumer = Consumer(client, keys, OTLP_GROUP, "otlp-1", claim_idle_ms=60_000)
    base = loop_settings(settings)
    return OtlpLoop(consumer, settings, namespace=keys.namespace, loop=replace(base, burst=True))


def trace(plan_id: str | None = "plan-a", **overrides: object) -> LLMTrace:
    values: dict[str, object] = {
        "plan_id": plan_id,
        "decision_id": "d-1",
        "actor": "planner",
        "provider": "openai",
        "model": "gpt-4o",
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cost_usd": 0.001,
        "latency_ms": 20.0,
        "started_at": datetime.now(UTC) - timedelta(seconds=1),
    }
    return llm_trace(values, **overrides)


def pending(client: redis.Redis, keys: Keys) -> int:
    if not client.exists(keys.traces):
        return 0
    return int(client.xpending(keys.traces, OTLP_GROUP)["pending"])  # type: ignore[index]


def attrs(span: Span) -> dict[str, object]:
    out: dict[str, object] = {}
    for kv in span.attributes:
        value = kv.value
        out[kv.key] = getattr(value, value.WhichOneof("value"))
    return out


def llm_spans(receiver: OtlpReceiver) -> list[Span]:
    return [s for s in receiver.spans() if s.kind == Span.SpanKind.SPAN_KIND_CLIENT]


# -- the mapping ----------------------------------------------------------------------


def test_a_call_becomes_a_genai_span_under_plan_decision_and_actor() -> None:
    record = trace(error="RateLimitError: slow down", tool_calls=["search"])
    request = export_request([record], service_name="svc", namespace="ns")
    spans = {s.name: s for s in request.resource_spans[0].scope_spans[0].spans}
    assert set(spans) == {"plan plan-a", "decision d-1", "invoke_agent planner", "chat gpt-4o"}
    plan, decision = spans["plan plan-a"], spans["decision d-1"]
    actor, call = spans["invoke_agent planner"], spans["chat gpt-4o"]
    assert plan.parent_span_id == b""
    assert decision.parent_span_id == plan.span_id
    assert actor.parent_span_id == decision.span_id
    assert call.parent_span_id == actor.span_id
    assert len({s.trace_id for s in spans.values()}) == 1
    values = attrs(call)
    assert values["gen_ai.operation.name"] == "chat"
    assert values["gen_ai.provider.name"] == "openai"
    assert values["gen_ai.request.model"] == values["gen_ai.response.model"] == "gpt-4o"
    assert values["gen_ai.usage.input_tokens"] == 10
    assert values["gen_ai.usage.output_tokens"] == 5
    assert values[COST_ATTRIBUTE] == 0.001
    assert values["error.type"] == "RateLimitError"
    assert call.status.message == "RateLimitError: slow down"
    assert call.end_time_unix_nano - call.start_time_unix_nano == 20_000_000
    assert attrs(actor)["gen_ai.agent.name"] == "planner"
    resource = {
        kv.key: kv.value.string_value for kv in request.resource_spans[0].resource.attributes
    }
    assert resource == {"service.name": "svc", "fleettrace.namespace": "ns"}


def test_every_genai_attribute_name_is_defined_by_the_conventions() -> None:
    records = [trace(), trace(None, actor=None, decision_id=None, cost_usd=None, error="E: x")]
    request = export_request(records, service_name="svc", namespace="ns")
    names = {
        kv.key for span in request.resource_spans[0].scope_spans[0].spans for kv in span.attributes
    }
    genai = {n for n in names if n.startswith("gen_ai.")}
    assert genai >= {"gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.agent.name"}
    assert genai <= GENAI_NAMES
    assert not {n for n in names if not n.startswith(("gen_ai.", "fleettrace.", "error."))}


def test_ids_are_the_same_whatever_batch_carries_the_record() -> None:
    a, b = trace(), trace()
    alone = export_request([a], service_name="s", namespace="n")
    together = export_request([b, a], service_name="s", namespace="n")

    def ids(request: ExportTraceServiceRequest) -> dict[str, tuple[bytes, bytes, bytes]]:
        return {
            s.name + s.span_id.hex(): (s.trace_id, s.span_id, s.parent_span_id)
            for s in request.resource_spans[0].scope_spans[0].spans
        }

    assert set(ids(alone).items()) <= set(ids(together).items())
    assert llm_span_id(a) != llm_span_id(b)
    # A call without a plan is a trace of its own, keyed by its trace id.
    lone = trace(None, actor=None, decision_id=None)
    span = export_request([lone], service_name="s", namespace="n").resource_spans[0]
    assert span.scope_spans[0].spans[0].trace_id == lone.trace_id.bytes


# -- settings ---------------------------------------------------------------------------


def test_settings_follow_the_standard_variables_and_hide_header_values() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "https://cloud.langfuse.com/api/public/otel/",
        "OTEL_EXPORTER_OTLP_HEADERS": f"Authorization=Basic%20{SECRET},x-team=a",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
    }
    settings = OtlpSettings.from_env(env)
    assert settings.endpoint == "https://cloud.langfuse.com/api/public/otel/v1/traces"
    assert settings.headers == {"Authorization": f"Basic {SECRET}", "x-team": "a"}
    assert settings.timeout_s == 2.5
    assert settings.gzip
    assert SECRET not in repr(settings) and "Authorization" in repr(settings)
    own = {**env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/custom"}
    assert OtlpSettings.from_env(own).endpoint == "http://127.0.0.1:4318/custom"
    assert not OtlpSettings.from_env({}).enabled
    assert not OtlpSettings.from_env({**env, "OTEL_SDK_DISABLED": "true"}).enabled


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "speaks http/protobuf only"),
        ({"OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"}, "must be one of gzip, none"),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "soon"}, "must be a number"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://x"}, "http:// or https://"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://u:p@x"}, "must not carry credentials"),
        ({"OTEL_EXPORTER_OTLP_HEADERS": f"Authorization {SECRET}"}, "pair 1 is not name=value"),
    ],
)
def test_bad_settings_are_one_clear_error_without_secrets(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message) as caught:
        OtlpSettings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", **env})
    assert SECRET not in str(caught.value)


def test_headers_parse_percent_encoding() -> None:
    assert parse_headers("a=b%3Dc, d = e ,") == {"a": "b=c", "d": "e"}


# -- the receiver is strict -----------------------------------------------------------


def test_the_receiver_refuses_what_a_collector_refuses(receiver: OtlpReceiver) -> None:
    good = export_request([trace()], service_name="s", namespace="n")
    proto = {"Content-Type": "application/x-protobuf"}
    url = receiver.traces_url
    assert requests.post(url, data=good.SerializeToString(), headers=proto).status_code == 200
    json_type = {"Content-Type": "application/json"}
    assert requests.post(url, data=b"{}", headers=json_type).status_code == 415
    assert requests.post(url, data=b"\xff\xff\xff", headers=proto).status_code == 400
    gz = {**proto, "Content-Encoding": "gzip"}
    assert requests.post(url, data=b"not gzip", headers=gz).status_code == 400
    zero = ExportTraceServiceRequest()
    zero.CopyFrom(good)
    zero.resource_spans[0].scope_spans[0].spans[0].trace_id = bytes(16)
    assert requests.post(url, data=zero.SerializeToString(), headers=proto).status_code == 400
    unknown = ExportTraceServiceRequest()
    unknown.CopyFrom(good)
    unknown.resource_spans[0].scope_spans[0].spans[0].attributes.add().key = "gen_ai.made_up"
    answer = requests.post(url, data=unknown.SerializeToString(), headers=proto)
    assert answer.status_code == 400 and "gen_ai.made_up" in answer.text
    assert len(receiver.spans()) == len(good.resource_spans[0].scope_spans[0].spans)


# -- delivery ---------------------------------------------------------------------------


def test_every_record_arrives_once_and_entries_are_acknowledged(
    receiver: OtlpReceiver, redis_client: redis.Redis, keys: Keys
) -> None:
    records = [trace("plan-a") for _ in range(4)] + [trace("plan-b"), trace(None)]
    add_traces(redis_client, keys, records[:3])
    add_traces(redis_client, keys, records[3:])
    redis_client.xadd(keys.traces, {b"v": b"0", b"d": b"x"})
    bad = encode_lines(Kind.TRACE, [b'{"provider": 1}'], new_batch_id())
    redis_client.xadd(keys.traces, bad)  # type: ignore[arg-type]

    loop = make_loop(redis_client, keys, settings_for(receiver))
    assert SECRET not in repr(loop)
    loop.run(threading.Event())
    loop.close()

    calls = llm_spans(receiver)
    assert sorted(s.span_id for s in calls) == sorted(llm_span_id(r) for r in records)
    by_id = {attrs(s)["fleettrace.trace_id"]: s for s in calls}
    assert set(by_id) == {str(r.trace_id) for r in records}
    assert receiver.received.resources[0]["service.name"] == keys.namespace
    sent = receiver.received.headers[0]
    assert sent["Content-Encoding"] == "gzip"
    assert sent["Authorization"] == f"Basic {SECRET}"
    assert pending(redis_client, keys) == 0
    assert list_dead_letters(redis_client, keys, OTLP_GROUP) == []


def test_503_429_and_timeouts_are_retried_and_nothing_is_sent_twice(
    receiver: OtlpReceiver, redis_client: redis.Redis, keys: Keys
) -> None:
    records = [trace() for _ in range(5)]
    add_traces(redis_client, keys, records)
    receiver.faults.extend(
        [
            Fault(503),
            Fault(429, {"Retry-After": "0.3"}),
            Fault(200, delay_s=1.5),  # past the client's 0.5 s timeout
        ]
    )
    loop = make_loop(redis_client, keys, settings_for(receiver, timeout_s=0.5))
    loop.run(threading.Event())
    loop.close()
    assert receiver.received.statuses[503] == 1 and receiver.received.statuses[429] == 1
    assert loop.stats.retries == 3
    assert sorted(s.span_id for s in llm_spans(receiver)) == sorted(llm_span_id(r) for r in records)
    assert pending(redis_client, keys) == 0
    assert list_dead_letters(redis_client, keys, OTLP_GROUP) == []


def test_429_retry_after_is_honoured_as_the_wait(
    receiver: OtlpReceiver, redis_client: redis.Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleettrace_worker.stream import loop as loop_module

    waits: list[float | None] = []
    real = loop_module.backoff_delay_s

    def spy(attempt: int, **kwargs: object) -> float:
        waits.append(kwargs.get("retry_after_s"))  # type: ignore[arg-type]
        return real(attempt, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(loop_module, "backoff_delay_s", spy)
    add_traces(redis_client, keys, [trace()])
    receiver.faults.append(Fault(429, {"Retry-After": "0.2"}))
    loop = make_loop(redis_client, keys, settings_for(receiver))
    loop.run(threading.Event())
    loop.close()
    assert waits == [0.2]
    assert len(llm_spans(receiver)) == 1


def test_past_the_retry_window_records_become_dead_letters_with_the_reason(
    receiver: OtlpReceiver, redis_client: redis.Redis, keys: Keys
) -> None:
    add_traces(redis_client, keys, [trace(), trace()])
    receiver.down.set()
    loop = make_loop(redis_client, keys, settings_for(receiver, retry_for_s=0.3))
    loop.run(threading.Event())
    loop.close()
    dead = [d for _, d in list_dead_letters(redis_client, keys, OTLP_GROUP)]
    assert len(dead) == 1
    assert "the OTLP endpoint kept failing for" in dead[0].reason
    assert "answered 503" in dead[0].reason
    assert pending(redis_client, keys) == 0
    assert receiver.spans() == []


@pytest.mark.parametrize("status", [401, 403, 404])
def test_configuration_answers_hold_entries_pending_without_dead_letters(
    status: int, receiver: OtlpReceiver, redis_client: redis.Redis, keys: Keys
) -> None:
    add_traces(redis_client, keys, [trace()])
    stop = threading.Event()
    loop = make_loop(redis_client, keys, settings_for(receiver, retry_for_s=0.1))
    receiver.faults.extend([Fault(status)] * 1000)
    seen = threading.Event()

    def run() -> None:
        loop.run(stop)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        # Wait until the loop has been refused several times (past the window).
        while receiver.received.statuses[status] < 4:
            seen.wait(0.05)
        assert loop.stats.ready is False
        assert f"answered {status}" in (loop.stats.last_error or "")
        assert "OTEL_EXPORTER_OTLP_HEADERS" in (loop.stats.last_error or "")
        assert SECRET not in (loop.stats.last_error or "")
    finally:
        stop.set()
        thread.join()
        loop.close()
    assert list_dead_letters(redis_client, keys, OTLP_GROUP) == []
    assert pending(redis_client, keys) == 1


def test_another_4xx_dead_letters_the_entry_with_the_answer(
    receiver: OtlpReceiver, redis_client: redis.Redis, keys: Keys
) -> None:
    add_traces(redis_client, keys, [trace()])
    receiver.faults.append(Fault(400))
    loop = make_loop(redis_client, keys, settings_for(receiver))
    loop.run(threading.Event())
    loop.close()
    dead = [d for _, d in list_dead_letters(redis_client, keys, OTLP_GROUP)]
    assert len(dead) == 1 and "answered 400: injected" in dead[0].reason
    assert pending(redis_client, keys) == 0


def test_partial_success_dead_letters_each_named_span_with_the_message(
    receiver: OtlpReceiver, redis_client: redis.Redis, keys: Keys
) -> None:
    records = [trace() for _ in range(4)]
    add_traces(redis_client, keys, records)
    bad = {llm_span_id(records[1]), llm_span_id(records[3])}
    receiver.faults.append(
        Fault(
            reject=lambda spans: [s for s in spans if s.span_id in bad],
            message="spans " + ", ".join(sorted(b.hex() for b in bad)) + ": too old",
        )
    )
    loop = make_loop(redis_client, keys, settings_for(receiver))
    loop.run(threading.Event())
    loop.close()
    dead = [d for _, d in list_dead_letters(redis_client, keys, OTLP_GROUP)]
    assert len(dead) == 2
    got = {LLMTrace.model_validate_json(d.record).trace_id for d in dead}  # type: ignore[arg-type]
    assert got == {records[1].trace_id, records[3].trace_id}
    assert all("rejected the span" in d.reason and "too old" in d.reason for d in dead)
    assert len(llm_spans(receiver)) == 2
    assert pending(redis_client, keys) == 0


def test_partial_success_without_names_dead_letters_the_whole_request(
    receiver: OtlpReceiver, redis_client: redis.Redis, keys: Keys
) -> None:
    records = [trace() for _ in range(3)]
    add_traces(redis_client, keys, records)
    receiver.faults.append(Fault(reject=lambda spans: spans[-1:], message="quota exceeded"))
    loop = make_loop(redis_client, keys, settings_for(receiver))
    loop.run(threading.Event())
    loop.close()
    dead = [d for _, d in list_dead_letters(redis_client, keys, OTLP_GROUP)]
    assert len(dead) == 3
    assert all("rejected 1 of the request's spans" in d.reason for d in dead)
    assert all("quota exceeded" in d.reason for d in dead)


def test_gzip_off_sends_plain_protobuf(
    receiver: OtlpReceiver, redis_client: redis.Redis, keys: Keys
) -> None:
    add_traces(redis_client, keys, [trace()])
    loop = make_loop(redis_client, keys, settings_for(receiver, gzip=False))
    loop.run(threading.Event())
    loop.close()
    assert "Content-Encoding" not in receiver.received.headers[0]
    assert len(llm_spans(receiver)) == 1


def test_a_refused_connection_is_retried_then_dead_lettered_past_the_window(
    redis_client: redis.Redis, keys: Keys
) -> None:
    with OtlpReceiver() as gone:
        settings = settings_for(gone, retry_for_s=0.3)
    # The receiver is closed: its port refuses connections.
    add_traces(redis_client, keys, [trace()])
    loop = make_loop(redis_client, keys, settings)
    loop.run(threading.Event())
    loop.close()
    dead = [d for _, d in list_dead_letters(redis_client, keys, OTLP_GROUP)]
    assert len(dead) == 1
    assert "cannot connect to the OTLP endpoint" in dead[0].reason
    assert loop.stats.retries >= 1
    assert pending(redis_client, keys) == 0


def test_a_parent_span_is_sent_again_only_when_a_batch_widens_it(
    receiver: OtlpReceiver, redis_client: redis.Redis, keys: Keys
) -> None:
    t0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    loop = make_loop(redis_client, keys, settings_for(receiver))
    batches = [
        [trace(started_at=t0, latency_ms=20.0)],
        [trace(started_at=t0 + timedelta(seconds=1), latency_ms=20.0)],
        [trace(started_at=t0 + timedelta(milliseconds=500), latency_ms=10.0)],
    ]
    for batch in batches:
        add_traces(redis_client, keys, batch)
        loop.run(threading.Event())
    loop.close()
    plans = [s for s in receiver.spans() if s.name == "plan plan-a"]
    start = int(t0.timestamp()) * 1_000_000_000
    assert [(s.start_time_unix_nano - start, s.end_time_unix_nano - start) for s in plans] == [
        (0, 20_000_000),
        (0, 1_020_000_000),
    ]
    assert len({s.span_id for s in plans}) == 1
    assert len(llm_spans(receiver)) == 3


def test_partial_success_naming_only_a_parent_span_dead_letters_no_record(
    receiver: OtlpReceiver, redis_client: redis.Redis, keys: Keys
) -> None:
    records = [trace(), trace()]
    add_traces(redis_client, keys, records)
    receiver.faults.append(
        Fault(
            reject=lambda spans: [s for s in spans if s.name == "plan plan-a"],
            message="",  # filled below from the span the receiver rejects
        )
    )
    plan_span = next(
        s
        for s in export_request(records, service_name="s", namespace="n")
        .resource_spans[0]
        .scope_spans[0]
        .spans
        if s.name == "plan plan-a"
    )
    receiver.faults[0].message = f"span {plan_span.span_id.hex()}: end before start"
    loop = make_loop(redis_client, keys, settings_for(receiver))
    loop.run(threading.Event())
    loop.close()
    assert list_dead_letters(redis_client, keys, OTLP_GROUP) == []
    assert len(llm_spans(receiver)) == 2
    assert pending(redis_client, keys) == 0


def test_a_replayed_dead_letter_arrives_with_the_same_span_id(
    receiver: OtlpReceiver, redis_client: redis.Redis, keys: Keys
) -> None:
    record = trace()
    add_traces(redis_client, keys, [record])
    receiver.faults.append(Fault(400))
    loop = make_loop(redis_client, keys, settings_for(receiver))
    loop.run(threading.Event())
    assert llm_spans(receiver) == []
    report = replay_dead_letters(redis_client, keys, OTLP_GROUP)
    assert len(report.replayed) == 1
    loop.run(threading.Event())
    loop.close()
    assert [s.span_id for s in llm_spans(receiver)] == [llm_span_id(record)]
    assert list_dead_letters(redis_client, keys, OTLP_GROUP) == []
