Feature: Every LLM call an agent records is stored, queryable and counted
  As the person who answers for a fleet of LLM agents and its bill,
  I want each LLM call my agents make to be kept exactly as it was recorded,
  so that the history, the costs and the live figures I look at can be trusted.

  Background:
    Given a fresh trace store that "fleettrace migrate" has prepared

  Scenario: A recorded LLM call is stored with every field as it was recorded
    When an agent records this LLM call:
      | field             | value                                                            |
      | plan_id           | plan-checkout                                                    |
      | decision_id       | decision-7                                                       |
      | actor             | planner                                                          |
      | provider          | openai                                                           |
      | model             | gpt-4o                                                           |
      | prompt_tokens     | 1200                                                             |
      | completion_tokens | 340                                                              |
      | cost_usd          | 0.0064                                                           |
      | latency_ms        | 812.5                                                            |
      | tool_calls        | search, read_file                                                |
      | context_hash      | 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 |
      | streaming         | true                                                             |
      | retry_count       | 2                                                                |
      | error             | RateLimitError: slow down                                        |
      | started_at        | 2026-11-27T09:30:00.123456+00:00                                 |
    And the worker has processed everything waiting
    Then the llm_traces table holds 1 row
    And the row of that call holds every field exactly as recorded

  Scenario: A call recorded without a price is priced from its model and tokens
    When an agent records an LLM call of "openai" "gpt-4o" with 1000 prompt and 500 completion tokens and no cost
    And the worker has processed everything waiting
    Then the stored call costs 0.0075 USD

  Scenario: The calls of a plan come back in the order they were made
    When an agent records these LLM calls, in this order:
      | plan_id | decision_id | model       | started_at                |
      | plan-a  | d3          | gpt-4o      | 2026-11-27T10:00:03+00:00 |
      | plan-b  | d1          | gpt-4o      | 2026-11-27T10:00:00+00:00 |
      | plan-a  | d1          | gpt-4o-mini | 2026-11-27T10:00:01+00:00 |
      | plan-a  | d2          | gpt-4o      | 2026-11-27T10:00:02+00:00 |
    And the worker has processed everything waiting
    Then the traces of plan "plan-a" are the decisions "d1, d2, d3" in that order
    And the traces of plan "plan-b" are the decisions "d1" in that order

  Scenario: A cost summary by model adds up to the calls behind it
    When an agent records these LLM calls, in this order:
      | provider  | model            | prompt_tokens | completion_tokens | cost_usd | latency_ms | error                     |
      | openai    | gpt-4o           | 1000          | 500               | 0.0075   | 400        |                           |
      | openai    | gpt-4o           | 2000          | 100               | 0.006    | 600        |                           |
      | openai    | gpt-4o-mini      | 4000          | 1000              | 0.0012   | 200        | RateLimitError: slow down |
      | anthropic | claude-3-5-haiku | 1000          | 200               | 0.0016   | 300        |                           |
      | openai    | gpt-4o           | 500           | 500               | 0.00625  | 800        | Timeout: no answer        |
    And the worker has processed everything waiting
    Then the cost summary by model reads:
      | model            | calls | prompt_tokens | completion_tokens | cost_usd | errors |
      | claude-3-5-haiku | 1     | 1000          | 200               | 0.0016   | 0      |
      | gpt-4o           | 3     | 3500          | 1100              | 0.01975  | 1      |
      | gpt-4o-mini      | 1     | 4000          | 1000              | 0.0012   | 1      |
    And the summary adds up to the 5 calls recorded, 0.02255 USD in all

  Scenario: A malformed record goes to the dead-letter stream and the good ones around it are stored
    When a batch arrives holding a good call, a call whose prompt_tokens is -5, and another good call
    And the worker has processed everything waiting
    Then the llm_traces table holds the 2 good calls
    And the dead-letter stream holds 1 record whose reason names "prompt_tokens"
    And nothing is left pending on the trace stream

  Scenario: The live counters match what was recorded
    When an agent runs plan "plan-x" in which the actor "coder" makes these LLM calls, one decision each:
      | provider | model       | prompt_tokens | completion_tokens | retry_count | fails with                |
      | openai   | gpt-4o      | 1000          | 500               | 0           |                           |
      | openai   | gpt-4o      | 2000          | 100               | 2           |                           |
      | openai   | gpt-4o      | 300           | 0                 | 3           | RateLimitError: slow down |
      | openai   | gpt-4o-mini | 4000          | 1000              | 1           | RateLimitError: slow down |
    And the tool "search" succeeds 2 times and fails 1 time
    Then the live counters read, where a retry count counts the calls that retried:
      | metric                       | labels                                                   | count | sum  |
      | actor.token_usage            | provider=openai, model=gpt-4o, token_type=prompt         | 3     | 3300 |
      | actor.token_usage            | provider=openai, model=gpt-4o, token_type=completion     | 3     | 600  |
      | actor.token_usage            | provider=openai, model=gpt-4o-mini, token_type=prompt    | 1     | 4000 |
      | llm.retries_count            | provider=openai, model=gpt-4o                            | 2     | 5    |
      | llm.retries_count            | provider=openai, model=gpt-4o-mini                       | 1     | 1    |
      | llm.errors_count             | provider=openai, model=gpt-4o, error_type=RateLimitError | 1     | 1    |
      | llm.latency_ms               | provider=openai, model=gpt-4o                            | 3     |      |
      | llm.latency_ms               | provider=openai, model=gpt-4o-mini                       | 1     |      |
      | plan.decisions_count         | plan=plan-x                                              | 4     | 4    |
      | tool.error_rate              | tool=search, outcome=ok                                  | 2     | 2    |
      | tool.error_rate              | tool=search, outcome=error                               | 1     | 1    |
      | actor.invocation_duration_ms | actor=coder                                              | 1     |      |
      | plan.duration_seconds        | phase=total                                              | 1     |      |
    And the live cost of plan "plan-x" equals the sum of its calls' costs
    And a budget check of 0.01 USD says the plan is over budget
    And a budget check of 0.02 USD says the plan is within budget
