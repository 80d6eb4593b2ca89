-- fleettrace schema version 6: every new row carries its namespace, and the reads of
-- one namespace stay on an index.
-- The worker stamps the namespace of the stream a record came from (version 3); from
-- now on a row without one is refused, so no row can belong to no fleet. The checks
-- are NOT VALID: rows stored before version 3 keep their NULL (no one knows their
-- namespace; `--all-namespaces` shows them) and nothing is scanned to add them.
-- Version 4 and 5 are numbers taken by other changes; migrations apply every version
-- the database lacks, so the gap is harmless.

ALTER TABLE llm_traces
    ADD CONSTRAINT llm_traces_with_namespace CHECK (namespace IS NOT NULL) NOT VALID;
ALTER TABLE metric_samples
    ADD CONSTRAINT metric_samples_with_namespace CHECK (namespace IS NOT NULL) NOT VALID;

-- One namespace's calls newest first (traces list), its time ranges (cost --since)
-- and its retention (prune --namespace), without walking the other namespaces' rows.
-- The started_at index stays for --all-namespaces. Metric samples get no second index:
-- only prune filters them by namespace, and it walks the observed_at index once.
CREATE INDEX IF NOT EXISTS llm_traces_namespace_idx
    ON llm_traces (namespace, started_at, trace_id);
