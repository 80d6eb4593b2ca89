-- fleettrace schema version 4: attributes (stream format version 3).
-- tags, metadata, user_id and session_id say who and what a call was for; ttft_ms
-- is the time to the first token of a streamed call. Most rows carry none of them:
-- they stay NULL (an empty list of tags and an empty metadata object are stored as
-- NULL too), and every index below is partial (WHERE ... IS NOT NULL), so a row
-- without them adds no index entry and costs a few bits of its null bitmap.
-- Nullable columns without a default are added without rewriting the table; the
-- checks hold nothing for the existing rows (all NULL there) and every new row.
-- The indexes are built in the migration's transaction: on a large table that scan
-- blocks writers while it runs (the rows of this version are all NULL, so it is one
-- sequential read of the table and nothing written).

ALTER TABLE llm_traces
    ADD COLUMN IF NOT EXISTS tags       text[]
        CHECK (cardinality(tags) BETWEEN 1 AND 32 AND array_position(tags, NULL) IS NULL),
    ADD COLUMN IF NOT EXISTS metadata   jsonb
        CHECK (jsonb_typeof(metadata) = 'object' AND metadata <> '{}'::jsonb),
    ADD COLUMN IF NOT EXISTS user_id    text CHECK (char_length(user_id) BETWEEN 1 AND 128),
    ADD COLUMN IF NOT EXISTS session_id text CHECK (char_length(session_id) BETWEEN 1 AND 128),
    ADD COLUMN IF NOT EXISTS ttft_ms    double precision CHECK (ttft_ms BETWEEN 0 AND 86400000);

-- `traces list/cost --tag` (tags @> ARRAY[...]) and `--meta` (metadata @> '{...}').
CREATE INDEX IF NOT EXISTS llm_traces_tags_idx ON llm_traces USING gin (tags)
    WHERE tags IS NOT NULL;
CREATE INDEX IF NOT EXISTS llm_traces_metadata_idx ON llm_traces USING gin (metadata jsonb_path_ops)
    WHERE metadata IS NOT NULL;
-- `--user` / `--session` filters and `fleettrace erase --user/--session`.
CREATE INDEX IF NOT EXISTS llm_traces_user_idx ON llm_traces (user_id, started_at)
    WHERE user_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS llm_traces_session_idx ON llm_traces (session_id, started_at)
    WHERE session_id IS NOT NULL;
