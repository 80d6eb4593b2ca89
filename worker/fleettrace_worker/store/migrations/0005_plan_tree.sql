-- fleettrace schema version 5: the plan tree (stream format version 3).
-- Numbered 5: version 4 is the attributes' schema (tags, metadata, user, session);
-- the migration runner applies every version a database lacks, so either may land
-- first.
--
-- Every record of a tree names its root plan and the root's start, and the ancestors
-- of its own plan (plan_path, root first): a row can be placed in its tree without
-- reading the rest of it. Adding nullable columns, or one with a constant default,
-- rewrites nothing; IF NOT EXISTS keeps the file harmless when run twice.

ALTER TABLE llm_traces
    ADD COLUMN IF NOT EXISTS root_plan_id    text CHECK (char_length(root_plan_id) BETWEEN 1 AND 128),
    ADD COLUMN IF NOT EXISTS root_started_at timestamptz,
    ADD COLUMN IF NOT EXISTS plan_path       text[] NOT NULL DEFAULT '{}'
        CHECK (cardinality(plan_path) <= 32);

-- Tool calls and plan lifecycles are tables of their own, not a kind column on
-- llm_traces: their columns share almost nothing with an LLM call's (no provider,
-- model or tokens), and llm_traces' NOT NULL checks and every query and index over
-- it stay as they are. See docs/reference/observability.md.
CREATE TABLE IF NOT EXISTS tool_calls (
    call_id         uuid             PRIMARY KEY,
    tool            text             NOT NULL CHECK (char_length(tool) BETWEEN 1 AND 128),
    plan_id         text             CHECK (char_length(plan_id) BETWEEN 1 AND 128),
    decision_id     text             CHECK (char_length(decision_id) BETWEEN 1 AND 128),
    actor           text             CHECK (char_length(actor) BETWEEN 1 AND 128),
    root_plan_id    text             CHECK (char_length(root_plan_id) BETWEEN 1 AND 128),
    root_started_at timestamptz,
    plan_path       text[]           NOT NULL CHECK (cardinality(plan_path) <= 32),
    started_at      timestamptz      NOT NULL,
    duration_ms     double precision NOT NULL CHECK (duration_ms BETWEEN 0 AND 86400000),
    outcome         text             NOT NULL CHECK (outcome IN ('ok', 'error')),
    error           text             CHECK (char_length(error) <= 4096),
    producer        text             CHECK (char_length(producer) BETWEEN 1 AND 64),
    namespace       text             CHECK (char_length(namespace) BETWEEN 1 AND 64),
    ingested_at     timestamptz      NOT NULL DEFAULT now()
);

-- A plan's lifecycle, one row per plan run (a plan id reused for two runs is two
-- rows, told apart by record_id).
CREATE TABLE IF NOT EXISTS plans (
    record_id       uuid             PRIMARY KEY,
    plan_id         text             NOT NULL CHECK (char_length(plan_id) BETWEEN 1 AND 128),
    parent_plan_id  text             CHECK (char_length(parent_plan_id) BETWEEN 1 AND 128),
    root_plan_id    text             NOT NULL CHECK (char_length(root_plan_id) BETWEEN 1 AND 128),
    root_started_at timestamptz      NOT NULL,
    plan_path       text[]           NOT NULL CHECK (cardinality(plan_path) <= 32),
    started_at      timestamptz      NOT NULL,
    ended_at        timestamptz      NOT NULL CHECK (ended_at >= started_at),
    duration_ms     double precision NOT NULL CHECK (duration_ms BETWEEN 0 AND 2592000000),
    status          text             NOT NULL CHECK (status IN ('ok', 'error')),
    error           text             CHECK (char_length(error) <= 4096),
    phases_ms       jsonb            NOT NULL,
    producer        text             CHECK (char_length(producer) BETWEEN 1 AND 64),
    namespace       text             CHECK (char_length(namespace) BETWEEN 1 AND 64),
    ingested_at     timestamptz      NOT NULL DEFAULT now()
);

-- A plan's tree is read by its root: one index scan per table finds every row of it.
-- Partial indexes: calls outside any plan tree pay nothing for them.
CREATE INDEX IF NOT EXISTS llm_traces_root_plan_idx ON llm_traces (root_plan_id, started_at)
    WHERE root_plan_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS tool_calls_root_plan_idx ON tool_calls (root_plan_id, started_at)
    WHERE root_plan_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS tool_calls_plan_idx ON tool_calls (plan_id, started_at)
    WHERE plan_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS plans_root_plan_idx ON plans (root_plan_id, started_at);
CREATE INDEX IF NOT EXISTS plans_plan_idx ON plans (plan_id, started_at);
-- Retention (started_at < cutoff).
CREATE INDEX IF NOT EXISTS tool_calls_started_at_idx ON tool_calls (started_at);
CREATE INDEX IF NOT EXISTS plans_started_at_idx ON plans (started_at);
