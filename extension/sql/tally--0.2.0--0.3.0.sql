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

