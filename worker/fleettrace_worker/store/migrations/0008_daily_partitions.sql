-- fleettrace schema version 8: the record tables partitioned by day.
-- llm_traces, metric_samples, tool_calls and plans become RANGE-partitioned on the
-- time a row happened (started_at; observed_at for samples), one partition per UTC
-- day, so retention drops whole days instead of deleting rows (docs/storage.md).
--
-- A partitioned table's unique keys must hold the partition key, so each primary key
-- gains the time column: (trace_id, started_at), (batch_id, position, observed_at),
-- (call_id, started_at), (record_id, started_at). A redelivered record carries the
-- time it was recorded with, so it still meets its stored row and is stored once.
--
-- Nothing is copied. Each table is renamed <table>_legacy and attached, as it is, as
-- the partition of everything before the first daily partition (MINVALUE up to the day
-- after its newest row, at least tomorrow); an empty one is dropped instead. The only
-- work proportional to the rows is building the new primary key on the old table and
-- checking its rows lie in its range, both under the ACCESS EXCLUSIVE lock the rename
-- takes (the key is built ahead, concurrently, when `fleettrace migrate` applies this:
-- store/partitions.py prebuild_keys): writers wait for that long (docs/storage.md), then go on into
-- the partitioned table under the same name. Index names stay what they were (the old
-- table's indexes are renamed <table>_legacy_...), and the checks keep their names
-- and their NOT VALID state.
--
-- A default partition per table takes a row no daily partition covers (a day not
-- created yet, or older than the first one), so no row is ever refused for its date.
-- `fleettrace migrate` and the worker create the daily partitions ahead and move such
-- rows out of the default partition when their day's partition is made
-- (fleettrace_worker/store/partitions.py).

DO $$
DECLARE
    spec record;
    legacy text;
    newest timestamptz;
    upper_bound timestamptz;
    item record;
BEGIN
    FOR spec IN
        SELECT * FROM (VALUES
            ('llm_traces', 'started_at', 'trace_id'),
            ('metric_samples', 'observed_at', 'batch_id, position'),
            ('tool_calls', 'started_at', 'call_id'),
            ('plans', 'started_at', 'record_id')
        ) AS s (tbl, col, id_cols)
    LOOP
        legacy := spec.tbl || '_legacy';
        EXECUTE format('ALTER TABLE %I RENAME TO %I', spec.tbl, legacy);
        -- Index (and so primary key) names are schema-wide: free them for the new table.
        FOR item IN
            SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
            WHERE i.indrelid = legacy::regclass
        LOOP
            EXECUTE format('ALTER INDEX %I RENAME TO %I', item.relname,
                           legacy || substr(item.relname, length(spec.tbl) + 1));
        END LOOP;
        EXECUTE format(
            'CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING STORAGE INCLUDING CONSTRAINTS) '
            'PARTITION BY RANGE (%I)', spec.tbl, legacy, spec.col);
        -- LIKE copies the checks under their names, as valid ones. Those NOT VALID on the
        -- old table (its rows from before the check existed are not checked) are made
        -- again on both tables from one text, NOT VALID: attaching compares them.
        FOR item IN
            SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint
            WHERE conrelid = legacy::regclass AND contype = 'c' AND NOT convalidated
        LOOP
            EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', spec.tbl, item.conname);
            EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', legacy, item.conname);
            EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I %s', spec.tbl, item.conname, item.def);
            EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I %s', legacy, item.conname, item.def);
        END LOOP;
        EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I PRIMARY KEY (%s, %I)',
                       spec.tbl, spec.tbl || '_pkey', spec.id_cols, spec.col);
        -- The other indexes as they were (attaching the old table then adopts its own
        -- copies of them instead of building new ones).
        FOR item IN
            SELECT pg_get_indexdef(i.indexrelid) AS def FROM pg_index i
            WHERE i.indrelid = legacy::regclass AND NOT i.indisprimary
              AND i.indexrelid IS DISTINCT FROM to_regclass(legacy || '_key_v8')
        LOOP
            EXECUTE replace(item.def, legacy, spec.tbl);
        END LOOP;
        EXECUTE format('CREATE TABLE %I PARTITION OF %I DEFAULT', spec.tbl || '_default', spec.tbl);
        EXECUTE format('SELECT max(%I) FROM %I', spec.col, legacy) INTO newest;
        IF newest IS NULL THEN
            EXECUTE format('DROP TABLE %I', legacy);
        ELSE
            -- The day after the newest row (or tomorrow), midnight UTC.
            upper_bound := date_trunc('day', greatest(newest, now()), 'UTC') + interval '24 hours';
            EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', legacy, legacy || '_pkey');
            -- The new key, when `fleettrace migrate` built it beforehand without blocking
            -- writers (CREATE UNIQUE INDEX CONCURRENTLY <table>_key_v8), becomes the old
            -- table's primary key as it is; otherwise attaching builds it here.
            IF EXISTS (SELECT 1 FROM pg_index
                       WHERE indexrelid = to_regclass(legacy || '_key_v8') AND indisvalid) THEN
                EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I PRIMARY KEY USING INDEX %I',
                               legacy, legacy || '_pkey', legacy || '_key_v8');
            ELSIF to_regclass(legacy || '_key_v8') IS NOT NULL THEN
                EXECUTE format('DROP INDEX %I', legacy || '_key_v8');
            END IF;
            EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (MINVALUE) TO (%L)',
                           spec.tbl, legacy, upper_bound);
        END IF;
    END LOOP;
END
$$;
