"""Keywords of openai_agent.robot: the stored calls of an agent that wrapped its OpenAI
client once, checked against what the client answered it."""

from __future__ import annotations

from typing import Any

from robot.api.deco import keyword, library


@library(scope="SUITE")
class integrations:  # noqa: N801 (Robot imports a library by its module name)
    @keyword
    def stored_calls_should_match_the_answers(
        self, listing: dict[str, Any], answered: dict[str, Any]
    ) -> None:
        """Every call the agent made is listed once, with the model the server named,
        the usage it reported, a price, and the streamed and tool-calling ones marked."""
        items = listing["items"]
        if len(items) != answered["calls"]:
            raise AssertionError(f"{len(items)} calls stored, the agent made {answered['calls']}")
        models = sorted(item["model"] for item in items)
        if models != sorted(answered["models"]):
            raise AssertionError(f"stored models {models}, answered {answered['models']}")
        for item in items:
            if (item["prompt_tokens"], item["completion_tokens"]) != (1200, 300):
                raise AssertionError(f"usage not as the server reported it: {item}")
            if not item["cost_usd"]:
                raise AssertionError(f"a call stored without a price: {item}")
            if item["plan_id"] is not None or item["error"] is not None:
                raise AssertionError(f"a call with a plan or an error it never had: {item}")
        streamed = sum(item["streaming"] for item in items)
        if streamed != answered["streamed"]:
            raise AssertionError(f"{streamed} streamed calls stored, {answered['streamed']} made")
        tools = sum(item["tool_calls"] == ["search"] for item in items)
        if tools != answered["tool_calls"]:
            raise AssertionError(f"{tools} calls with a tool call, {answered['tool_calls']} made")
