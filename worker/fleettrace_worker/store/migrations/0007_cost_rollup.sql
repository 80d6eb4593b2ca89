-- fleettrace schema version 7: the hourly cost rollups (by provider, model and actor;
-- by tag), and an index for the dashboard's plan-id prefix search.
--
-- llm_cost_hourly holds, per UTC hour, namespace, provider, model and actor, what the
-- long-range cost reads sum: calls, priced calls, cost, tokens, errors, retried calls.
-- Triggers on llm_traces keep it, in the transaction that adds or removes the rows:
-- statement-level, over the transition table of the rows the statement really
-- inserted, deleted or changed. So a redelivered batch (the worker's merge skips rows
-- already there: INSERT ... ON CONFLICT DO NOTHING) adds nothing to it, and prune,
-- erase or any other DELETE takes off what it removed. Cost is numeric here so that
-- adding and taking off is exact (a float sum would drift).
--
-- NULL keys (calls without an actor, rows stored before namespaces) are kept as '' (a
-- value llm_traces' checks never let a call have), so the key can be a primary key on
-- any PostgreSQL from 13 on (NULLS NOT DISTINCT would need 15); readers turn '' back
-- into NULL.

CREATE TABLE llm_cost_hourly (
    hour              timestamptz NOT NULL,
    namespace         text        NOT NULL,
    provider          text        NOT NULL,
    model             text        NOT NULL,
    actor             text        NOT NULL,
    calls             bigint      NOT NULL,
    priced_calls      bigint      NOT NULL,
    cost_usd          numeric     NOT NULL,
    prompt_tokens     bigint      NOT NULL,
    completion_tokens bigint      NOT NULL,
    errors            bigint      NOT NULL,
    retried_calls     bigint      NOT NULL,
    PRIMARY KEY (namespace, hour, provider, model, actor)
);
-- The keys a removal emptied, found without reading the whole rollup.
CREATE INDEX llm_cost_hourly_emptied ON llm_cost_hourly (hour) WHERE calls <= 0;

-- The same per UTC hour, namespace and tag: a call counts once under each of its tags
-- (so these rows do not add up to the calls), and a call without tags under none.
CREATE TABLE llm_cost_hourly_tags (
    hour              timestamptz NOT NULL,
    namespace         text        NOT NULL,
    tag               text        NOT NULL,
    calls             bigint      NOT NULL,
    priced_calls      bigint      NOT NULL,
    cost_usd          numeric     NOT NULL,
    prompt_tokens     bigint      NOT NULL,
    completion_tokens bigint      NOT NULL,
    PRIMARY KEY (namespace, hour, tag)
);
CREATE INDEX llm_cost_hourly_tags_emptied ON llm_cost_hourly_tags (hour) WHERE calls <= 0;

-- Adds the rows of the transition table "added" to the rollup; "taken", when given,
-- is taken off. Keys are upserted in one order, so two writers never deadlock on them.
CREATE FUNCTION fleettrace_cost_rollup_apply() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        -- Lock the keys first, in the order the upserts below take them, so a removal
        -- and a store touching the same keys wait for each other, never deadlock.
        PERFORM 1 FROM llm_cost_hourly AS r
        WHERE EXISTS (
            SELECT 1 FROM taken AS t
            WHERE date_trunc('hour', t.started_at, 'UTC') = r.hour
              AND coalesce(t.namespace, '') = r.namespace
              AND t.provider = r.provider AND t.model = r.model
              AND coalesce(t.actor, '') = r.actor
        )
        ORDER BY r.namespace, r.hour, r.provider, r.model, r.actor
        FOR UPDATE OF r;
        WITH gone AS (
            SELECT date_trunc('hour', started_at, 'UTC') AS hour,
                   coalesce(namespace, '') AS namespace, provider, model,
                   coalesce(actor, '') AS actor, count(*) AS calls, count(cost_usd) AS priced_calls,
                   coalesce(sum(cost_usd::numeric), 0) AS cost_usd,
                   coalesce(sum(prompt_tokens), 0) AS prompt_tokens,
                   coalesce(sum(completion_tokens), 0) AS completion_tokens,
                   count(error) AS errors, count(*) FILTER (WHERE retry_count > 0) AS retried
            FROM taken GROUP BY 1, 2, 3, 4, 5
        )
        UPDATE llm_cost_hourly AS r SET
            calls = r.calls - g.calls,
            priced_calls = r.priced_calls - g.priced_calls,
            cost_usd = r.cost_usd - g.cost_usd,
            prompt_tokens = r.prompt_tokens - g.prompt_tokens,
            completion_tokens = r.completion_tokens - g.completion_tokens,
            errors = r.errors - g.errors,
            retried_calls = r.retried_calls - g.retried
        FROM gone AS g
        WHERE r.hour = g.hour AND r.namespace = g.namespace
          AND r.provider = g.provider AND r.model = g.model AND r.actor = g.actor;
        DELETE FROM llm_cost_hourly WHERE calls <= 0;

        PERFORM 1 FROM llm_cost_hourly_tags AS r
        WHERE EXISTS (
            SELECT 1 FROM taken AS t
            WHERE date_trunc('hour', t.started_at, 'UTC') = r.hour
              AND coalesce(t.namespace, '') = r.namespace AND r.tag = ANY(t.tags)
        )
        ORDER BY r.namespace, r.hour, r.tag
        FOR UPDATE OF r;
        WITH gone AS (
            SELECT date_trunc('hour', started_at, 'UTC') AS hour,
                   coalesce(namespace, '') AS namespace, tag, count(*) AS calls,
                   count(cost_usd) AS priced_calls,
                   coalesce(sum(cost_usd::numeric), 0) AS cost_usd,
                   coalesce(sum(prompt_tokens), 0) AS prompt_tokens,
                   coalesce(sum(completion_tokens), 0) AS completion_tokens
            FROM taken, LATERAL (SELECT DISTINCT unnest(tags)) AS each_tag(tag)
            GROUP BY 1, 2, 3
        )
        UPDATE llm_cost_hourly_tags AS r SET
            calls = r.calls - g.calls,
            priced_calls = r.priced_calls - g.priced_calls,
            cost_usd = r.cost_usd - g.cost_usd,
            prompt_tokens = r.prompt_tokens - g.prompt_tokens,
            completion_tokens = r.completion_tokens - g.completion_tokens
        FROM gone AS g
        WHERE r.hour = g.hour AND r.namespace = g.namespace AND r.tag = g.tag;
        DELETE FROM llm_cost_hourly_tags WHERE calls <= 0;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO llm_cost_hourly AS r
        SELECT date_trunc('hour', started_at, 'UTC'), coalesce(namespace, ''), provider, model,
               coalesce(actor, ''),
               count(*), count(cost_usd), coalesce(sum(cost_usd::numeric), 0),
               coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0),
               count(error), count(*) FILTER (WHERE retry_count > 0)
        FROM added GROUP BY 1, 2, 3, 4, 5 ORDER BY 2, 1, 3, 4, 5
        ON CONFLICT (namespace, hour, provider, model, actor) DO UPDATE SET
            calls = r.calls + excluded.calls,
            priced_calls = r.priced_calls + excluded.priced_calls,
            cost_usd = r.cost_usd + excluded.cost_usd,
            prompt_tokens = r.prompt_tokens + excluded.prompt_tokens,
            completion_tokens = r.completion_tokens + excluded.completion_tokens,
            errors = r.errors + excluded.errors,
            retried_calls = r.retried_calls + excluded.retried_calls;

        INSERT INTO llm_cost_hourly_tags AS r
        SELECT date_trunc('hour', started_at, 'UTC'), coalesce(namespace, ''), tag,
               count(*), count(cost_usd), coalesce(sum(cost_usd::numeric), 0),
               coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0)
        FROM added, LATERAL (SELECT DISTINCT unnest(tags)) AS each_tag(tag)
        GROUP BY 1, 2, 3 ORDER BY 2, 1, 3
        ON CONFLICT (namespace, hour, tag) DO UPDATE SET
            calls = r.calls + excluded.calls,
            priced_calls = r.priced_calls + excluded.priced_calls,
            cost_usd = r.cost_usd + excluded.cost_usd,
            prompt_tokens = r.prompt_tokens + excluded.prompt_tokens,
            completion_tokens = r.completion_tokens + excluded.completion_tokens;
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION fleettrace_cost_rollup_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE llm_cost_hourly, llm_cost_hourly_tags;
    RETURN NULL;
END
$$;

CREATE TRIGGER llm_traces_rollup_insert AFTER INSERT ON llm_traces
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION fleettrace_cost_rollup_apply();
CREATE TRIGGER llm_traces_rollup_delete AFTER DELETE ON llm_traces
    REFERENCING OLD TABLE AS taken
    FOR EACH STATEMENT EXECUTE FUNCTION fleettrace_cost_rollup_apply();
CREATE TRIGGER llm_traces_rollup_update AFTER UPDATE ON llm_traces
    REFERENCING OLD TABLE AS taken NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION fleettrace_cost_rollup_apply();
CREATE TRIGGER llm_traces_rollup_truncate AFTER TRUNCATE ON llm_traces
    FOR EACH STATEMENT EXECUTE FUNCTION fleettrace_cost_rollup_truncate();

-- Backfill from the rows already stored.
INSERT INTO llm_cost_hourly
SELECT date_trunc('hour', started_at, 'UTC'), coalesce(namespace, ''), provider, model,
       coalesce(actor, ''), count(*), count(cost_usd), coalesce(sum(cost_usd::numeric), 0),
       coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0),
       count(error), count(*) FILTER (WHERE retry_count > 0)
FROM llm_traces GROUP BY 1, 2, 3, 4, 5;

INSERT INTO llm_cost_hourly_tags
SELECT date_trunc('hour', started_at, 'UTC'), coalesce(namespace, ''), tag,
       count(*), count(cost_usd), coalesce(sum(cost_usd::numeric), 0),
       coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0)
FROM llm_traces, LATERAL (SELECT DISTINCT unnest(tags)) AS each_tag(tag)
GROUP BY 1, 2, 3;

-- The Plans page's prefix search (plan_id LIKE 'prefix%') as a range of one namespace's
-- plan ids. text_pattern_ops compares bytes, so the range holds under any collation
-- (llm_traces_plan_idx, in the database's collation, can only serve it under "C"); without
-- it a prefix over a long range reads the table (tests/test_dashboard_explain.py).
CREATE INDEX llm_traces_plan_prefix_idx ON llm_traces (namespace, plan_id text_pattern_ops)
    WHERE plan_id IS NOT NULL;
