"""Steps of integrations.feature: a real agent process that wraps its OpenAI client
once, a local OpenAI-compatible server, and the rows the worker stored."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from behave import given, then, when
from tests.llm_servers import COMPLETION_TOKENS, PROMPT_TOKENS, LLMServer

AGENT = Path(__file__).resolve().parents[2] / "robot" / "openai_agent.py"


def stored(context, columns: str) -> list[tuple]:
    with context.fleet.connect_db() as conn:
        return conn.execute(f"SELECT {columns} FROM llm_traces").fetchall()


@given("a local OpenAI-compatible server")
def step_llm_server(context):
    server = LLMServer().__enter__()
    context.add_cleanup(server.__exit__, None, None, None)
    context.llm_server = server


@when("an agent that wrapped its OpenAI client once makes {calls:d} chat completions")
def step_agent_calls(context, calls):
    result = subprocess.run(
        [
            sys.executable,
            str(AGENT),
            "--base-url",
            context.llm_server.openai_url,
            "--calls",
            str(calls),
        ],
        env=context.fleet.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"the agent exited {result.returncode}: {result.stderr}"
    context.answered = json.loads(result.stdout)
    assert context.answered["calls"] == calls


@then('every stored call names the model the server answered with, "{model}"')
def step_models(context, model):
    models = {m for (m,) in stored(context, "model")}
    assert models == {model} == set(context.answered["models"]), models


@then("every stored call has {prompt:d} prompt and {completion:d} completion tokens and a price")
def step_tokens(context, prompt, completion):
    assert (prompt, completion) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    rows = stored(context, "prompt_tokens, completion_tokens, cost_usd > 0")
    assert set(rows) == {(prompt, completion, True)}, rows


@then('{streamed:d} stored calls are streamed and {tools:d} asked for the tool "{name}"')
def step_streamed_and_tools(context, streamed, tools, name):
    rows = stored(context, "streaming, tool_calls")
    assert sum(s for s, _ in rows) == streamed == context.answered["streamed"], rows
    assert [t for _, t in rows if t] == [[name]] * tools, rows
