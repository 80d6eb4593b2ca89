-- fleettrace schema version 2: token details, and usage that may be unknown.
-- Each detail is a part of its total (prompt_tokens is the whole input, cache reads
-- and writes included; completion_tokens the whole output, reasoning included);
-- NULL means "not reported". prompt_tokens/completion_tokens NULL: the provider
-- returned no usage for the call. Nullable columns without a default are added
-- without rewriting the table, and the checks are NOT VALID (existing rows hold
-- NULL there, so there is nothing to scan for) yet enforced on every new row.

ALTER TABLE llm_traces
    ALTER COLUMN prompt_tokens DROP NOT NULL,
    ALTER COLUMN completion_tokens DROP NOT NULL,
    ADD COLUMN IF NOT EXISTS cache_read_tokens   integer,
    ADD COLUMN IF NOT EXISTS cache_write_tokens  integer,
    ADD COLUMN IF NOT EXISTS reasoning_tokens    integer,
    ADD COLUMN IF NOT EXISTS audio_input_tokens  integer,
    ADD COLUMN IF NOT EXISTS audio_output_tokens integer;

ALTER TABLE llm_traces
    ADD CONSTRAINT llm_traces_token_details_check CHECK (
        cache_read_tokens BETWEEN 0 AND 1000000000
        AND cache_write_tokens BETWEEN 0 AND 1000000000
        AND reasoning_tokens BETWEEN 0 AND 1000000000
        AND audio_input_tokens BETWEEN 0 AND 1000000000
        AND audio_output_tokens BETWEEN 0 AND 1000000000
        AND coalesce(cache_read_tokens, 0) + coalesce(cache_write_tokens, 0)
            <= coalesce(prompt_tokens, 2000000000)
        AND coalesce(audio_input_tokens, 0) <= coalesce(prompt_tokens, 1000000000)
        AND coalesce(reasoning_tokens, 0) <= coalesce(completion_tokens, 1000000000)
        AND coalesce(audio_output_tokens, 0) <= coalesce(completion_tokens, 1000000000)
    ) NOT VALID;
