-- tally 0.1.0 -> 0.2.0: security hardening. Each change says why; see CHANGELOG.md.
\echo Use "ALTER EXTENSION tally UPDATE TO '0.2.0'" to load this file. \quit

-- The reservation timeout is read from the setting the library registers, which only a
-- superuser may change now; the SQL function it replaces resolved current_setting()
-- through the caller's search path.
CREATE OR REPLACE FUNCTION tally.reservation_timeout() RETURNS interval
STRICT STABLE PARALLEL SAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'reservation_timeout_wrapper';
COMMENT ON FUNCTION tally.reservation_timeout() IS 'How long a started session holds a reservation (setting tally.reservation_timeout, superuser-only).';

-- record_session gains not_before (the API's bound on how far end users backdate)
-- and a pinned search path. A new argument is a new signature: drop, then create.
DROP FUNCTION tally.record_session(text, text, uuid, uuid, text, timestamptz, timestamptz, integer);
CREATE FUNCTION tally.record_session(
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
        ON CONFLICT ON CONSTRAINT sessions_pkey DO NOTHING
        RETURNING x.* INTO stored;
    END IF;
    created := FOUND;
    IF NOT created THEN
        -- The id exists: a retry, or a reuse the caller must refuse. A row deleted
        -- meanwhile leaves nothing to return.
        SELECT x.* INTO stored FROM tally.sessions x WHERE x.session_id = record_session.session_id;
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

-- usage_document resolves names in pg_catalog only, whatever the caller's search path.
ALTER FUNCTION tally.usage_document(text) SET search_path = pg_catalog, pg_temp;

-- No role may bind tally's trigger functions to tables of its own (they run with the
-- extension owner's rights); firing tally's own triggers checks no privilege.
REVOKE ALL ON FUNCTION
    tally.sessions_fill_completed_at(), tally.sessions_check_update(),
    tally.sessions_count_insert(), tally.sessions_count_update(), tally.sessions_count_delete(),
    tally.sessions_reject_truncate(), tally.usage_reject_direct_write(),
    tally.learning_plans_guard_counter(), tally.learning_plans_keep_completed(),
    tally.session_kinds_check_counter(), tally.subscriptions_rebucket(),
    tally.subscriptions_drop_usage(), tally.plans_rebucket()
FROM PUBLIC;
