"""The ``hash_context`` opt-in of the provider wrappers: the request's context is
stored as its SHA-256 in ``context_hash``, never as text, and only when asked for.
Every test reads the rows the worker stored in PostgreSQL."""

from __future__ import annotations

import hashlib

import anthropic
import openai
import orjson
import pytest

import fleettrace
from fleettrace.integrations import wrap_anthropic, wrap_openai
from fleettrace.integrations._calls import context_hash
from tests.llm_servers import LLMServer

SECRET = "the launch code is 0000"
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": SECRET}]
OTHER = [{"role": "user", "content": "something else"}]


def sha256_of(context: dict[str, object]) -> str:
    return hashlib.sha256(orjson.dumps(context, option=orjson.OPT_SORT_KEYS)).hexdigest()


def openai_client(server: LLMServer, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_url, api_key="sk-test", **kwargs)


def test_the_same_messages_hash_alike_whatever_the_model_and_options(server, pipeline) -> None:
    wrapped = wrap_openai(openai_client(server), hash_context=True)
    wrapped.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    wrapped.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, temperature=0.2)
    list(wrapped.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    wrapped.chat.completions.create(model="gpt-4o", messages=OTHER)
    rows = pipeline.rows()
    assert [row["streaming"] for row in rows] == [False, False, True, False]
    expected = sha256_of({"messages": MESSAGES})
    assert [row["context_hash"] for row in rows] == [expected] * 3 + [
        sha256_of({"messages": OTHER})
    ]
    assert all(row["prompt_tokens"] is not None for row in rows)  # recorded as before
    assert not any(SECRET in str(value) for row in rows for value in row.values())


def test_without_the_opt_in_nothing_is_hashed(server, pipeline) -> None:
    wrap_openai(openai_client(server)).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    [row] = pipeline.rows()
    assert row["context_hash"] is None


def test_a_failed_call_keeps_its_hash(server, pipeline) -> None:
    server.fail(400)
    wrapped = wrap_openai(openai_client(server, max_retries=0), hash_context=True)
    with pytest.raises(openai.BadRequestError):
        wrapped.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    [row] = pipeline.rows()
    assert row["error"].startswith("BadRequestError: ")
    assert row["context_hash"] == sha256_of({"messages": MESSAGES})


def test_the_responses_api_hashes_its_instructions_and_input(server, pipeline) -> None:
    wrapped = wrap_openai(openai_client(server), hash_context=True)
    wrapped.responses.create(model="gpt-4o", instructions="be brief", input=SECRET)
    wrapped.responses.create(model="gpt-4o", input=SECRET)
    rows = pipeline.rows()
    assert [row["context_hash"] for row in rows] == [
        sha256_of({"instructions": "be brief", "input": SECRET}),
        sha256_of({"input": SECRET}),
    ]


def test_anthropic_hashes_its_system_prompt_and_messages(server, pipeline) -> None:
    client = anthropic.Anthropic(base_url=server.anthropic_url, api_key="sk-ant-test")
    wrapped = wrap_anthropic(client, hash_context=True)
    user = [{"role": "user", "content": SECRET}]
    wrapped.messages.create(
        model="claude-3-5-sonnet-latest", max_tokens=64, system="be brief", messages=user
    )
    [row] = pipeline.rows()
    assert row["context_hash"] == sha256_of({"system": "be brief", "messages": user})


def test_inside_an_open_llm_span_the_hash_fills_the_span(server, pipeline) -> None:
    wrapped = wrap_openai(openai_client(server), hash_context=True)
    with fleettrace.actor("planner") as planner, planner.llm("openai", "gpt-4o"):
        wrapped.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    [row] = pipeline.rows()
    assert (row["actor"], row["context_hash"]) == ("planner", sha256_of({"messages": MESSAGES}))


def test_a_context_that_cannot_be_hashed_leaves_the_call_recorded_without_one(
    server, pipeline
) -> None:
    # A message dict with a non-string key: the SDK sends it (json turns the key into
    # a string), the hash refuses it; the call is recorded, without a hash.
    odd = [{"role": "user", "content": "hi", 1: "x"}]
    wrapped = wrap_openai(openai_client(server), hash_context=True)
    answer = wrapped.chat.completions.create(model="gpt-4o", messages=odd)  # type: ignore[list-item]
    assert answer.usage is not None
    [row] = pipeline.rows()
    assert row["context_hash"] is None
    assert row["prompt_tokens"] == answer.usage.prompt_tokens


@pytest.mark.parametrize("body", [None, "text", {}, {"model": "gpt-4o"}, [MESSAGES]])
def test_a_body_without_a_context_has_no_hash(body: object) -> None:
    assert context_hash(body) is None


def test_the_hash_is_sha256_of_the_context_keys_only() -> None:
    body = {"model": "m", "temperature": 1, "messages": MESSAGES, "input": "x"}
    assert context_hash(body) == sha256_of({"messages": MESSAGES, "input": "x"})
    assert len(context_hash(body) or "") == 64
