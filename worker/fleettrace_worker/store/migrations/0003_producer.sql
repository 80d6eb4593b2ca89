-- fleettrace schema version 2: who recorded each row.
-- The worker writes the producer identity and the namespace of the stream it read
-- a record from ({ns}:p:<producer>:traces), never a value inside the record, so an
-- agent cannot make its records pass for another producer's. Rows stored before
-- this version, and rows read from the streams of the layout before per-producer
-- keys, have no producer (NULL).
-- Adding a nullable column without a default rewrites nothing (instant at any table
-- size); IF NOT EXISTS keeps the file harmless when run twice.

ALTER TABLE llm_traces
    ADD COLUMN IF NOT EXISTS producer  text CHECK (char_length(producer) BETWEEN 1 AND 64),
    ADD COLUMN IF NOT EXISTS namespace text CHECK (char_length(namespace) BETWEEN 1 AND 64);

ALTER TABLE metric_samples
    ADD COLUMN IF NOT EXISTS producer  text CHECK (char_length(producer) BETWEEN 1 AND 64),
    ADD COLUMN IF NOT EXISTS namespace text CHECK (char_length(namespace) BETWEEN 1 AND 64);
