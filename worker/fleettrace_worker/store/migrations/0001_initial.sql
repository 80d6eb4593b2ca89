-- fleettrace schema version 1: LLM calls and metric samples.
-- The CHECK constraints repeat the bounds of fleettrace.model, so a row written by
-- anything other than the worker still means what a validated record means.

CREATE TABLE llm_traces (
    trace_id          uuid             PRIMARY KEY,
    plan_id           text             CHECK (char_length(plan_id) BETWEEN 1 AND 128),
    decision_id       text             CHECK (char_length(decision_id) BETWEEN 1 AND 128),
    actor             text             CHECK (char_length(actor) BETWEEN 1 AND 128),
    provider          text             NOT NULL CHECK (char_length(provider) BETWEEN 1 AND 128),
    model             text             NOT NULL CHECK (char_length(model) BETWEEN 1 AND 128),
    prompt_tokens     integer          NOT NULL CHECK (prompt_tokens BETWEEN 0 AND 1000000000),
    completion_tokens integer          NOT NULL CHECK (completion_tokens BETWEEN 0 AND 1000000000),
    cost_usd          double precision CHECK (cost_usd BETWEEN 0 AND 1000000),
    latency_ms        double precision NOT NULL CHECK (latency_ms BETWEEN 0 AND 86400000),
    tool_calls        text[]           NOT NULL,
    context_hash      text             CHECK (char_length(context_hash) = 64),
    streaming         boolean          NOT NULL,
    retry_count       integer          NOT NULL CHECK (retry_count BETWEEN 0 AND 10000),
    error             text             CHECK (char_length(error) <= 4096),
    started_at        timestamptz      NOT NULL,
    ingested_at       timestamptz      NOT NULL DEFAULT now()
);

-- Indexes cost write throughput (each one is a second btree insert per row), so
-- only the queries that must stay fast at any table size get one; see docs/storage.md.
-- Listing and paging newest first, time-range filters, and retention (started_at < cutoff).
CREATE INDEX llm_traces_started_at_idx ON llm_traces (started_at, trace_id);
-- The traces of one plan in order.
CREATE INDEX llm_traces_plan_idx ON llm_traces (plan_id, started_at, trace_id)
    WHERE plan_id IS NOT NULL;
-- Errors only: a small slice of the table, so a small index.
CREATE INDEX llm_traces_errors_idx ON llm_traces (started_at, trace_id) WHERE error IS NOT NULL;

-- A metric sample has no id of its own: the batch it came in and its position in
-- that batch name it for good, which makes storing it idempotent.
CREATE TABLE metric_samples (
    batch_id    uuid             NOT NULL,
    position    integer          NOT NULL CHECK (position >= 0),
    key         text             NOT NULL,
    labels      jsonb            NOT NULL,
    value       double precision NOT NULL,
    plan_id     text             CHECK (char_length(plan_id) BETWEEN 1 AND 128),
    observed_at timestamptz      NOT NULL,
    ingested_at timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (batch_id, position)
);

-- Retention and time-range reads; a reader of one key's history filters this range.
CREATE INDEX metric_samples_observed_at_idx ON metric_samples (observed_at);
