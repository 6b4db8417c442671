-- tally 0.9.0 -> 0.10.0: a node can join a distributed tally. See CHANGELOG.md.
\echo Use "ALTER EXTENSION tally UPDATE TO '0.10.0'" to load this file. \quit

-- The one list of what leaves the extension on a Citus node, and the event trigger
-- that applies it when Citus replaces a joining node's tables with the
-- coordinator's shells (each node runs this script itself, so each gets both).
CREATE FUNCTION tally.leave_extension_here() RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    member record;
BEGIN
    FOR member IN
        SELECT kind, format('tally.%I', name) AS name
          FROM unnest(ARRAY['VIEW', 'VIEW', 'VIEW', 'VIEW', 'TABLE', 'TABLE', 'TABLE', 'TABLE', 'TABLE', 'TABLE', 'TABLE', 'SEQUENCE'],
                      ARRAY['current_usage_document', 'learning_plan_lists', 'current_usage', 'usage_recount',
                            'plans', 'session_kinds', 'subscriptions', 'learning_plans', 'sessions', 'usage',
                            'adjustments', 'adjustments_adjustment_id_seq']) WITH ORDINALITY AS m(kind, name, n)
         ORDER BY n
    LOOP
        IF EXISTS (SELECT FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
                    WHERE e.extname = 'tally' AND d.deptype = 'e' AND d.classid = 'pg_class'::regclass
                      AND d.objid = to_regclass(member.name)) THEN
            EXECUTE format('ALTER EXTENSION tally DROP %s %s', member.kind, member.name);
        END IF;
    END LOOP;
END
$fn$;
COMMENT ON FUNCTION tally.leave_extension_here() IS
    'Takes tally''s tables, views and sequence out of the extension on this node, for Citus (tally.distribute() and a joining node).';
REVOKE ALL ON FUNCTION tally.leave_extension_here() FROM PUBLIC;

-- Whether this node's own copies of tally's tables hold rows: a node with sessions,
-- subscriptions or plans of its own cannot hold shards, and its tables are not
-- dropped (distribute() and a joining node both ask).
CREATE FUNCTION tally.own_tables_hold_data() RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    RETURN EXISTS (SELECT FROM tally.sessions) OR EXISTS (SELECT FROM tally.subscriptions)
        OR EXISTS (SELECT FROM tally.plans);
END
$fn$;
REVOKE ALL ON FUNCTION tally.own_tables_hold_data() FROM PUBLIC;

-- A node added to a distributed tally (citus_add_node, whether or not an operator
-- created tally there first) runs CREATE EXTENSION tally if needed and then drops
-- each of tally's tables to create the coordinator's shell in its place. Those
-- tables are still extension members there, which PostgreSQL would refuse to drop:
-- at the first DROP TABLE on a Citus worker whose tally tables are members, they
-- leave the extension, unless they hold data (a node with sessions of its own
-- cannot join; nothing is dropped).
CREATE FUNCTION tally.leave_extension_on_worker() RETURNS event_trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') THEN
        RETURN;
    END IF;
    IF (SELECT groupid FROM pg_dist_local_group) = 0 THEN
        RETURN;  -- the coordinator, or a node not added yet
    END IF;
    IF NOT EXISTS (SELECT FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
                    WHERE e.extname = 'tally' AND d.deptype = 'e' AND d.classid = 'pg_class'::regclass
                      AND d.objid = to_regclass('tally.sessions')) THEN
        RETURN;
    END IF;
    IF tally.own_tables_hold_data() THEN
        RAISE EXCEPTION USING ERRCODE = 'TL009',
            MESSAGE = 'this node''s own tally tables hold data, so it cannot hold shards of a distributed tally',
            HINT = 'move that data to the coordinator, run DROP EXTENSION tally CASCADE on this node, then add it again';
    END IF;
    PERFORM tally.leave_extension_here();
END
$fn$;
REVOKE ALL ON FUNCTION tally.leave_extension_on_worker() FROM PUBLIC;
CREATE EVENT TRIGGER tally_leave_extension_on_worker ON ddl_command_start
    WHEN TAG IN ('DROP TABLE')
    EXECUTE FUNCTION tally.leave_extension_on_worker();

-- distribute() uses that list, and on the workers drops any local copy that is not
-- Citus's, member or not (CREATE OR REPLACE keeps the function's grants and comment).
CREATE OR REPLACE FUNCTION tally.distribute(shard_count integer DEFAULT NULL) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    -- In dependency order: referenced tables first.
    reference_tables CONSTANT text[] := ARRAY['plans', 'session_kinds'];
    distributed_tables CONSTANT text[] := ARRAY['subscriptions', 'learning_plans', 'sessions', 'usage', 'adjustments'];
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
    -- transaction, so it only drops copies that are still there and not Citus's (a
    -- retry after a failure finds nothing to do) and refuses copies that hold data.
    SET LOCAL client_min_messages = warning;  -- not Citus's notice per statement
    PERFORM tally.leave_extension_here();
    SELECT string_agg(format('%s:%s: %s', nodename, nodeport, result), '; ') INTO failed
      FROM run_command_on_workers($w$
        DO $do$
        BEGIN
            IF to_regclass('tally.sessions') IS NOT NULL
               AND NOT EXISTS (SELECT FROM pg_dist_partition WHERE logicalrelid = to_regclass('tally.sessions')) THEN
                IF tally.own_tables_hold_data() THEN
                    RAISE EXCEPTION 'this worker''s own tally tables hold data';
                END IF;
                PERFORM tally.leave_extension_here();
                DROP TABLE tally.plans, tally.session_kinds, tally.subscriptions, tally.learning_plans,
                           tally.sessions, tally.usage, tally.adjustments CASCADE;
            END IF;
        END
        $do$ $w$)
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
