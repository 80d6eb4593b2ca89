-- fleettrace schema version 9: the hourly cost rollup (schema 7) kept by the partitioned
-- llm_traces (schema 8).
--
-- Schema 8 renames llm_traces to llm_traces_legacy and attaches it, as it is, to a new
-- partitioned llm_traces; the rollup's triggers went with the old table, so they would
-- see only the rows that land in the legacy partition. Here they move to the parent:
-- statement-level triggers on a partitioned table see, in their transition tables, the
-- rows a statement changed in every partition (PostgreSQL 13 and later), so the rollup
-- stays exact for inserts, redeliveries, prune, erase, updates and truncation alike.
-- Partitions dropped whole by prune are taken off the rollup by prune itself
-- (store/retention.py), since DROP fires no trigger. Rows stored between schema 8 and
-- this version went to daily partitions unseen by the triggers on the legacy
-- partition: the rollup is rebuilt from the rows, once.

DROP TRIGGER IF EXISTS llm_traces_rollup_insert ON llm_traces_legacy;
DROP TRIGGER IF EXISTS llm_traces_rollup_delete ON llm_traces_legacy;
DROP TRIGGER IF EXISTS llm_traces_rollup_update ON llm_traces_legacy;
DROP TRIGGER IF EXISTS llm_traces_rollup_truncate ON llm_traces_legacy;
DROP TRIGGER IF EXISTS llm_traces_rollup_insert ON llm_traces;
DROP TRIGGER IF EXISTS llm_traces_rollup_delete ON llm_traces;
DROP TRIGGER IF EXISTS llm_traces_rollup_update ON llm_traces;
DROP TRIGGER IF EXISTS llm_traces_rollup_truncate ON llm_traces;

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

TRUNCATE llm_cost_hourly, llm_cost_hourly_tags;
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
