Feature: An agent's OpenAI calls are recorded with one wrap and nothing else
  As the person who adds fleettrace to an agent that already talks to OpenAI,
  I want to wrap its client once and change nothing else,
  so that every call it makes is stored with its model, tokens and cost.

  Background:
    Given a fresh trace store that "fleettrace migrate" has prepared
    And a local OpenAI-compatible server

  Scenario: An agent using the OpenAI client records its calls with no fleettrace code around them but one wrap
    When an agent that wrapped its OpenAI client once makes 6 chat completions
    And the worker has processed everything waiting
    Then the llm_traces table holds 6 rows
    And every stored call names the model the server answered with, "gpt-4o-2024-08-06"
    And every stored call has 1200 prompt and 300 completion tokens and a price
    And 2 stored calls are streamed and 1 asked for the tool "search"
