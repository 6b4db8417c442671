-- tally 0.8.0 -> 0.9.0: tally.usage.started_bound, an upper bound on a period's
-- started sessions kept by the single-row counting path, with which a limit check
-- skips counting reservations when none can be held. See CHANGELOG.md.
\echo Use "ALTER EXTENSION tally UPDATE TO '0.9.0'" to load this file. \quit

-- NULL (unknown) in every row: the first single-row write of each row counts its
-- reservations and writes the bound. A distributed tally keeps no bound: its
-- tables, no longer extension members, are left as they are.
DO $do$
DECLARE
    distributed boolean := false;
BEGIN
    IF to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL THEN
        EXECUTE $q$SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_partition
                                  WHERE logicalrelid = pg_catalog.to_regclass('tally.usage'))$q$
           INTO distributed;
    END IF;
    IF NOT distributed AND to_regclass('tally.usage') IS NOT NULL THEN
        ALTER TABLE tally.usage ADD COLUMN started_bound integer;
        COMMENT ON COLUMN tally.usage.started_bound IS 'Maintained by tally only: at least the number of started sessions of metered kinds in the period, or NULL when not known. A limit check skips counting reservations when it is 0.';
    END IF;
END
$do$;

-- distribute() makes the bound NULL before distributing (CREATE OR REPLACE keeps
-- the function's grants and comment).
CREATE OR REPLACE FUNCTION tally.distribute(shard_count integer DEFAULT NULL) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    -- In dependency order: referenced tables first.
    reference_tables CONSTANT text[] := ARRAY['plans', 'session_kinds'];
    distributed_tables CONSTANT text[] := ARRAY['subscriptions', 'learning_plans', 'sessions', 'usage', 'adjustments'];
    -- Views go first, then the tables they read.
    leave_extension CONSTANT text :=
        'ALTER EXTENSION tally DROP VIEW tally.current_usage_document;
         ALTER EXTENSION tally DROP VIEW tally.learning_plan_lists;
         ALTER EXTENSION tally DROP VIEW tally.current_usage;
         ALTER EXTENSION tally DROP VIEW tally.usage_recount;
         ALTER EXTENSION tally DROP TABLE tally.plans;
         ALTER EXTENSION tally DROP TABLE tally.session_kinds;
         ALTER EXTENSION tally DROP TABLE tally.subscriptions;
         ALTER EXTENSION tally DROP TABLE tally.learning_plans;
         ALTER EXTENSION tally DROP TABLE tally.sessions;
         ALTER EXTENSION tally DROP TABLE tally.usage;
         ALTER EXTENSION tally DROP TABLE tally.adjustments;
         ALTER EXTENSION tally DROP SEQUENCE tally.adjustments_adjustment_id_seq;';
    foreign_keys text[];
    fk record;
    t text;
    failed text;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') THEN
        RAISE EXCEPTION USING ERRCODE = 'TL009',
            MESSAGE = 'tally.distribute() needs Citus: this database has no citus extension',
            HINT = 'preload citus before tally (shared_preload_libraries = ''citus,tally''), CREATE EXTENSION citus and add the workers first';
    END IF;
    IF EXISTS (SELECT FROM pg_dist_partition WHERE logicalrelid = 'tally.sessions'::regclass) THEN
        RAISE NOTICE 'tally is already distributed';
        RETURN;
    END IF;
    IF (SELECT groupid FROM pg_dist_local_group) <> 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'TL009',
            MESSAGE = 'tally.distribute() runs on the Citus coordinator',
            HINT = 'connect to the coordinator and call it there';
    END IF;

    -- Citus distributes neither extension members nor the views over them. Here the
    -- objects leave the extension; on the workers, CREATE EXTENSION made empty local
    -- copies, which go so that Citus can create its own there. That runs outside this
    -- transaction, so it only drops what is still an extension member (a retry after
    -- a failure finds nothing to do) and refuses copies that hold data.
    SET LOCAL client_min_messages = warning;  -- not Citus's notice per statement
    EXECUTE leave_extension;
    SELECT string_agg(format('%s:%s: %s', nodename, nodeport, result), '; ') INTO failed
      FROM run_command_on_workers(format($w$
        DO $do$
        BEGIN
            IF EXISTS (SELECT FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
                        WHERE e.extname = 'tally' AND d.deptype = 'e' AND d.objid = 'tally.sessions'::regclass) THEN
                IF EXISTS (SELECT FROM tally.sessions) OR EXISTS (SELECT FROM tally.subscriptions)
                   OR EXISTS (SELECT FROM tally.plans) THEN
                    RAISE EXCEPTION 'this worker''s own tally tables hold data';
                END IF;
                %s
                DROP TABLE tally.plans, tally.session_kinds, tally.subscriptions, tally.learning_plans,
                           tally.sessions, tally.usage, tally.adjustments CASCADE;
            END IF;
        END
        $do$ $w$, leave_extension))
     WHERE NOT success;
    IF failed IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'TL009',
            MESSAGE = 'tally.distribute() could not prepare every worker: ' || failed;
    END IF;

    -- Citus adds a table's foreign keys only to tables it already distributes:
    -- they are dropped here and added back once every table is distributed.
    SELECT coalesce(array_agg(format('ALTER TABLE %s ADD CONSTRAINT %I %s', c.conrelid::regclass, c.conname,
                                     pg_get_constraintdef(c.oid)) ORDER BY c.conname), '{}')
      INTO foreign_keys
      FROM pg_constraint c WHERE c.contype = 'f' AND c.connamespace = 'tally'::regnamespace;
    FOR fk IN SELECT c.conrelid::regclass AS rel, c.conname FROM pg_constraint c
               WHERE c.contype = 'f' AND c.connamespace = 'tally'::regnamespace LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', fk.rel, fk.conname);
    END LOOP;
    -- Citus cannot enforce uniqueness without the distribution column: ids are
    -- unique per user from here on.
    ALTER TABLE tally.sessions DROP CONSTRAINT sessions_session_id_key;
    ALTER TABLE tally.learning_plans DROP CONSTRAINT learning_plans_learning_plan_id_key;

    SET LOCAL citus.enable_unsafe_triggers = on;
    -- Foreign keys to reference tables need one connection per node for the whole
    -- transaction.
    SET LOCAL citus.multi_shard_modify_mode = 'sequential';
    -- Citus copies each table's rows into its new shards, which get tally's triggers.
    -- The rows are counted already (and tally.usage is copied as it is, so
    -- tally.verify() reports the same before and after): no trigger may fire for
    -- the copy, on any node. They are disabled until every table is distributed.
    FOREACH t IN ARRAY reference_tables || distributed_tables LOOP
        EXECUTE format('ALTER TABLE tally.%I DISABLE TRIGGER USER', t);
    END LOOP;
    -- The bound on started sessions is kept on one node only (a kind's counter
    -- change, repair and set-based writes would each have to reach every shard to
    -- make it unknown): NULL from here on, and the library does not read it on a
    -- shard, so every limit check counts reservations. (The column stays: the views
    -- over tally.usage name it.)
    UPDATE tally.usage SET started_bound = NULL WHERE started_bound IS NOT NULL;
    FOREACH t IN ARRAY reference_tables LOOP
        PERFORM create_reference_table(format('tally.%I', t)::regclass);
    END LOOP;
    PERFORM create_distributed_table('tally.subscriptions', 'user_id',
                                     shard_count => coalesce(shard_count, current_setting('citus.shard_count')::int));
    FOREACH t IN ARRAY distributed_tables[2:] LOOP
        PERFORM create_distributed_table(format('tally.%I', t)::regclass, 'user_id', colocate_with => 'tally.subscriptions');
    END LOOP;
    -- Before the triggers are back: the coordinator's copy of the rows, hidden now, frees its space.
    FOREACH t IN ARRAY reference_tables || distributed_tables LOOP
        PERFORM truncate_local_data_after_distributing_table(format('tally.%I', t)::regclass);
    END LOOP;
    FOREACH t IN ARRAY reference_tables || distributed_tables LOOP
        EXECUTE format('ALTER TABLE tally.%I ENABLE TRIGGER USER', t);
    END LOOP;
    FOREACH t IN ARRAY foreign_keys LOOP
        EXECUTE t;
    END LOOP;
END
$fn$;
