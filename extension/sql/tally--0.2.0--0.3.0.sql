-- tally 0.2.0 -> 0.3.0: keys that lead with user_id and tally.distribute(), for
-- running on Citus. Each change says why; see CHANGELOG.md.
\echo Use "ALTER EXTENSION tally UPDATE TO '0.3.0'" to load this file. \quit

-- Every key of a table Citus distributes must include the distribution column,
-- user_id. The ids stay unique on their own on one node; tally.distribute() drops
-- those two constraints, which Citus cannot enforce.
ALTER TABLE tally.sessions DROP CONSTRAINT sessions_learning_plan_same_user;
ALTER TABLE tally.learning_plans DROP CONSTRAINT learning_plans_id_user_key;
ALTER TABLE tally.learning_plans DROP CONSTRAINT learning_plans_pkey;
ALTER TABLE tally.learning_plans ALTER COLUMN learning_plan_id SET NOT NULL;
ALTER TABLE tally.learning_plans ADD CONSTRAINT learning_plans_pkey PRIMARY KEY (user_id, learning_plan_id);
ALTER TABLE tally.learning_plans ADD CONSTRAINT learning_plans_learning_plan_id_key UNIQUE (learning_plan_id);

ALTER TABLE tally.sessions DROP CONSTRAINT sessions_pkey;
ALTER TABLE tally.sessions ADD CONSTRAINT sessions_pkey PRIMARY KEY (user_id, session_id);
ALTER TABLE tally.sessions ADD CONSTRAINT sessions_session_id_key UNIQUE (session_id);
ALTER TABLE tally.sessions ADD CONSTRAINT sessions_learning_plan_same_user FOREIGN KEY (user_id, learning_plan_id)
    REFERENCES tally.learning_plans (user_id, learning_plan_id) ON DELETE CASCADE;
DROP INDEX tally.sessions_learning_plan_idx;
CREATE INDEX sessions_learning_plan_idx ON tally.sessions (user_id, learning_plan_id) WHERE learning_plan_id IS NOT NULL;

-- The audit log carries the user whose counter was corrected: for usage that is the
-- object id; for a learning plan, its owner (a plan deleted since with its whole
-- subscription leaves '' behind).
ALTER TABLE tally.adjustments ADD COLUMN user_id text;
UPDATE tally.adjustments a
   SET user_id = CASE WHEN a.object = 'usage' THEN a.object_id
                      ELSE coalesce((SELECT lp.user_id FROM tally.learning_plans lp
                                      WHERE lp.learning_plan_id::text = a.object_id), '') END;
ALTER TABLE tally.adjustments ALTER COLUMN user_id SET NOT NULL;
ALTER TABLE tally.adjustments DROP CONSTRAINT adjustments_pkey;
ALTER TABLE tally.adjustments ADD CONSTRAINT adjustments_pkey PRIMARY KEY (user_id, adjustment_id);

-- record_session: a retry is found by (user_id, session_id), the new key.
-- Record a session and read the counters it moved, in one call (one round trip for
-- clients). Counting is done by the triggers as for any INSERT; this adds only the
-- idempotent retry, the backdating bound and the read after the write.
--
-- It runs with the caller's rights but its own search path: an object in a schema
-- the caller (or anyone) can write is never called instead of pg_catalog's.
CREATE OR REPLACE FUNCTION tally.record_session(
    user_id text,
    kind text,
    session_id uuid DEFAULT NULL,
    learning_plan_id uuid DEFAULT NULL,
    status text DEFAULT 'completed',
    started_at timestamptz DEFAULT NULL,
    completed_at timestamptz DEFAULT NULL,
    duration_seconds integer DEFAULT NULL,
    not_before timestamptz DEFAULT NULL)
RETURNS json
LANGUAGE plpgsql VOLATILE
-- Its statements are key lookups. Plans cached while the tables were tiny would
-- otherwise stay sequential scans as the tables grow, until the next ANALYZE.
SET enable_seqscan = off
SET search_path = pg_catalog, pg_temp
AS $fn$
#variable_conflict use_column
DECLARE
    stored tally.sessions;
    created boolean;
    earliest timestamptz;
BEGIN
    -- A caller that may not import history (an end user's token) passes not_before:
    -- a backdated session may then start no earlier than it, nor before the
    -- user's current billing period, whose quota is the one that applies now.
    IF record_session.not_before IS NOT NULL AND record_session.started_at < now() THEN
        SELECT tally.period_start_for(s.period_anchor, p.period, now()) INTO earliest
          FROM tally.subscriptions s JOIN tally.plans p ON p.plan_id = s.plan_id
         WHERE s.user_id = record_session.user_id;
        earliest := greatest(earliest, record_session.not_before);
        IF record_session.started_at < earliest THEN
            RAISE EXCEPTION USING
                ERRCODE = 'TL008',
                MESSAGE = format('started_at %s is too far in the past: this caller may backdate a session to %s at the earliest',
                                 to_char(record_session.started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                                 to_char(earliest AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')),
                HINT = 'sessions older than that (or in an earlier billing period) are imported by a caller allowed to import history';
        END IF;
    END IF;
    IF record_session.session_id IS NULL THEN
        -- A new id cannot conflict: a plain INSERT, without the speculative
        -- insertion ON CONFLICT costs.
        INSERT INTO tally.sessions AS x
               (user_id, kind, learning_plan_id, status, started_at, completed_at, duration_seconds)
        VALUES (record_session.user_id, record_session.kind, record_session.learning_plan_id,
                record_session.status, coalesce(record_session.started_at, now()),
                record_session.completed_at, record_session.duration_seconds)
        RETURNING x.* INTO stored;
    ELSE
        INSERT INTO tally.sessions AS x
               (session_id, user_id, kind, learning_plan_id, status, started_at, completed_at, duration_seconds)
        VALUES (record_session.session_id, record_session.user_id, record_session.kind,
                record_session.learning_plan_id, record_session.status, coalesce(record_session.started_at, now()),
                record_session.completed_at, record_session.duration_seconds)
        ON CONFLICT DO NOTHING
        RETURNING x.* INTO stored;
    END IF;
    created := FOUND;
    IF NOT created THEN
        -- The id exists: a retry, or a reuse the caller must refuse. On one node
        -- session ids are unique across users (sessions_session_id_key), so the row
        -- may be another user's; on Citus they are unique per user. A row deleted
        -- meanwhile leaves nothing to return.
        SELECT x.* INTO stored FROM tally.sessions x
         WHERE x.user_id = record_session.user_id AND x.session_id = record_session.session_id;
        IF NOT FOUND THEN
            SELECT x.* INTO stored FROM tally.sessions x WHERE x.session_id = record_session.session_id;
        END IF;
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
    END IF;
    -- The usage after the write: built from what the INSERT's counting trigger saw
    -- when that covers it, else read from tally.current_usage_document.
    RETURN json_build_object('created', created, 'session', row_to_json(stored),
                             'usage', tally.session_usage_document(stored.user_id, stored.session_id));
END
$fn$;
COMMENT ON FUNCTION tally.record_session(text, text, uuid, uuid, text, timestamptz, timestamptz, integer, timestamptz) IS
    'INSERT a session unless session_id exists (ON CONFLICT DO NOTHING); returns {created, session, usage}: whether it inserted, the stored session, and tally.current_usage_document for its user. started_at NULL means now(); NULL when the id existed but the row is gone. With not_before, a started_at before it or before the user''s current billing period is refused (TL008).';


-- current_usage, written so that Citus can push it down to the shards (same columns,
-- same values).
CREATE OR REPLACE VIEW tally.current_usage AS
SELECT s.user_id,
       s.plan_id,
       tally.period_start_for(s.period_anchor, p.period, now()) AS period_start,
       tally.period_end_for(s.period_anchor, p.period, now()) AS period_end,
       coalesce(u.practice_sessions_used, 0) AS practice_sessions_used,
       p.practice_sessions_limit,
       -- greatest() skips NULLs, so an unlimited plan needs its own branch
       CASE WHEN p.practice_sessions_limit IS NOT NULL
            THEN greatest(p.practice_sessions_limit - coalesce(u.practice_sessions_used, 0) - coalesce(r.practice_in_progress, 0), 0)::integer
       END AS practice_sessions_remaining,
       coalesce(u.assessments_used, 0) AS assessments_used,
       p.assessments_limit,
       CASE WHEN p.assessments_limit IS NOT NULL
            THEN greatest(p.assessments_limit - coalesce(u.assessments_used, 0) - coalesce(r.assessments_in_progress, 0), 0)::integer
       END AS assessments_remaining
FROM tally.subscriptions s
JOIN tally.plans p ON p.plan_id = s.plan_id
-- The current period's bounds are written out where they are used: Citus pushes
-- this view down to the shards, and refuses a subquery without FROM that calls now().
LEFT JOIN tally.usage u
       ON u.user_id = s.user_id AND u.period_start = tally.period_start_for(s.period_anchor, p.period, now())
-- Grouped (one row or none): Citus refuses an ungrouped aggregate in a lateral
-- subquery that reads a reference table's column.
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE k.counter = 'practice_sessions') AS practice_in_progress,
           count(*) FILTER (WHERE k.counter = 'assessments') AS assessments_in_progress
    FROM tally.sessions x
    JOIN tally.session_kinds k ON k.kind = x.kind
    WHERE x.user_id = s.user_id
      AND x.status = 'started'
      AND x.started_at >= tally.period_start_for(s.period_anchor, p.period, now())
      AND x.started_at < tally.period_end_for(s.period_anchor, p.period, now())
      AND x.started_at > now() - tally.reservation_timeout()
    GROUP BY x.user_id
) r ON true;

-- tally.repair()'s fix of one counter on the node that holds it (Citus).
CREATE FUNCTION tally.repair_counter(
    "user_id" text, "object" text, "id" text, "period_start" timestamptz, "counter" text, "adjusted_by" text)
RETURNS bool
VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'repair_counter_wrapper';

-- tally.distribute()
CREATE FUNCTION tally.distribute(shard_count integer DEFAULT NULL) RETURNS void
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
COMMENT ON FUNCTION tally.distribute(integer) IS
    'On a Citus coordinator: distributes tally''s tables by user_id (co-located; plans and session_kinds as reference tables), keeping their data, triggers and foreign keys. shard_count defaults to citus.shard_count.';
REVOKE ALL ON FUNCTION tally.distribute(integer) FROM PUBLIC;

-- tally.repair() calls it, as the extension owner, on the node that holds a user's
-- shards; no other role may.
REVOKE ALL ON FUNCTION tally.repair_counter(text, text, text, timestamptz, text, text) FROM PUBLIC;
