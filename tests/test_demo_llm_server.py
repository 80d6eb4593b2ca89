"""The demo's local OpenAI-compatible server, driven by the real ``openai`` client
(wrapped, as the demo's agents use it): usage that follows the request, streams with
the usage chunk, tool calls, and the rate limits a request asks for, retried by the
client and counted in the rows the worker stored."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator

import openai
import pytest

from fleettrace.integrations import wrap_openai
from fleettrace_worker.demo.llm_server import (
    CACHE_MIN_TOKENS,
    DEFAULT_COMPLETION_TOKENS,
    FAILURES_HEADER,
    STATUS_HEADER,
    TOKENS_PER_MESSAGE,
    LLMServer,
    usage,
)

TOOLS = [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
    for name in ("search", "read_file", "run_tests")
]


@pytest.fixture
def demo_server() -> Iterator[LLMServer]:
    with LLMServer() as running:
        yield running


def words(count: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": " ".join(["w"] * count)}]


def test_usage_follows_the_request_and_the_model_is_the_one_asked_for(
    demo_server, pipeline
) -> None:
    client = wrap_openai(openai.OpenAI(base_url=demo_server.url, api_key="sk"), provider="acme")
    small = client.chat.completions.create(
        model="acme-1", messages=words(10), max_completion_tokens=33
    )
    large = client.chat.completions.create(model="acme-1", messages=words(3000))
    assert small.usage is not None and large.usage is not None
    assert (small.usage.prompt_tokens, small.usage.completion_tokens) == (
        10 + TOKENS_PER_MESSAGE,
        33,
    )
    assert large.usage.completion_tokens == DEFAULT_COMPLETION_TOKENS
    assert large.usage.prompt_tokens_details is not None
    assert large.usage.prompt_tokens_details.cached_tokens == 1408  # half of 3004, in steps of 128
    rows = pipeline.rows()
    assert [(r["provider"], r["model"]) for r in rows] == [("acme", "acme-1")] * 2
    assert [(r["prompt_tokens"], r["completion_tokens"], r["cache_read_tokens"]) for r in rows] == [
        (14, 33, 0),
        (3004, DEFAULT_COMPLETION_TOKENS, 1408),
    ]


def test_a_stream_carries_the_usage_only_when_asked_and_the_caller_sees_no_extra_chunk(
    demo_server, pipeline
) -> None:
    bare = openai.OpenAI(base_url=demo_server.url, api_key="sk")
    options = {"model": "gpt-4o", "messages": words(50), "max_completion_tokens": 20}
    unwrapped = list(bare.chat.completions.create(stream=True, **options))  # type: ignore[call-overload]
    assert all(chunk.usage is None for chunk in unwrapped)
    text = "".join(c.choices[0].delta.content or "" for c in unwrapped if c.choices)
    assert len(text.split()) == 20
    wrapped = wrap_openai(openai.OpenAI(base_url=demo_server.url, api_key="sk"))
    seen = list(wrapped.chat.completions.create(stream=True, **options))  # type: ignore[call-overload]
    assert len(seen) == len(unwrapped)
    [row] = pipeline.rows()
    assert (row["streaming"], row["prompt_tokens"], row["completion_tokens"]) == (True, 54, 20)


def test_tool_calls_are_some_of_those_offered_and_the_same_for_the_same_request(
    demo_server,
) -> None:
    client = openai.OpenAI(base_url=demo_server.url, api_key="sk")
    named = []
    for n in range(12):
        options = {"model": "gpt-4o", "messages": words(n + 1), "tools": TOOLS}
        first = client.chat.completions.create(**options)  # type: ignore[call-overload]
        again = client.chat.completions.create(**options)  # type: ignore[call-overload]
        calls = [c.function.name for c in first.choices[0].message.tool_calls or []]
        assert calls == [c.function.name for c in again.choices[0].message.tool_calls or []]
        assert len(calls) <= 2 and set(calls) <= {"search", "read_file", "run_tests"}
        named.append(len(calls))
    assert 0 in named and max(named) > 0
    plain = client.chat.completions.create(model="gpt-4o", messages=words(3))
    assert plain.choices[0].message.tool_calls is None


def test_rate_limits_asked_for_are_retried_by_the_client_and_counted(demo_server, pipeline) -> None:
    client = wrap_openai(openai.OpenAI(base_url=demo_server.url, api_key="sk", max_retries=3))
    ok = client.chat.completions.create(
        model="gpt-4o", messages=words(5), extra_headers={FAILURES_HEADER: "2"}
    )
    assert ok.usage is not None
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(
            model="gpt-4o", messages=words(5), extra_headers={FAILURES_HEADER: "4"}
        )
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(
            model="gpt-4o",
            messages=words(5),
            extra_headers={FAILURES_HEADER: "9", STATUS_HEADER: "500"},
        )
    rows = pipeline.rows()
    assert [(r["retry_count"], (r["error"] or "").split(":")[0]) for r in rows] == [
        (2, ""),
        (3, "RateLimitError"),
        (3, "InternalServerError"),
    ]
    assert demo_server.requests == 3 + 4 + 4


def _post(server: LLMServer, path: str, body: bytes, **headers: str) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{server.url.removesuffix('/v1')}{path}", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.parametrize(
    ("path", "body", "headers", "status"),
    [
        ("/v1/chat/completions", b"{not json", {}, 400),
        ("/v1/chat/completions", b"[1, 2]", {}, 400),
        ("/v1/embeddings", b"{}", {}, 404),
        # Hostile or odd headers are ignored: a normal answer.
        ("/v1/chat/completions", b"{}", {FAILURES_HEADER: "many"}, 200),
        ("/v1/chat/completions", b"{}", {FAILURES_HEADER: "1", STATUS_HEADER: "200"}, 200),
        ("/v1/chat/completions", b'{"messages": [1, {"content": null}]}', {}, 200),
    ],
)
def test_bad_requests_get_an_answer_never_a_hang(
    demo_server, path: str, body: bytes, headers: dict[str, str], status: int
) -> None:
    code, payload = _post(demo_server, path, body, **headers)
    assert code == status
    assert ("error" in payload) == (status != 200)


def test_a_bad_completion_limit_falls_back_to_the_default() -> None:
    for limit in (None, 0, -5, "ten", 2.5, True):
        assert usage({"max_tokens": limit})["completion_tokens"] == DEFAULT_COMPLETION_TOKENS
    below = usage({"messages": words(CACHE_MIN_TOKENS - TOKENS_PER_MESSAGE - 1)})
    assert below["prompt_tokens_details"]["cached_tokens"] == 0


def test_the_server_runs_alone_until_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleettrace_worker.demo.llm_server"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        answer = openai.OpenAI(base_url=url, api_key="sk").chat.completions.create(
            model="gpt-4o", messages=words(7)
        )
        assert answer.usage is not None and answer.usage.prompt_tokens == 7 + TOKENS_PER_MESSAGE
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0
    assert stderr == ""
