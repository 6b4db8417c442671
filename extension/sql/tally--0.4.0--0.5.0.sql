-- tally 0.4.0 -> 0.5.0: record_session without function-level SET clauses (every
-- name in it qualified), its two rare statements in functions of their own. See
-- CHANGELOG.md.
\echo Use "ALTER EXTENSION tally UPDATE TO '0.5.0'" to load this file. \quit

-- The helpers first: the new record_session calls them.

-- record_session's backdating bound, for a caller that may not import history (an
-- end user's token): a backdated session may start no earlier than not_before, nor
-- before the user's current billing period, whose quota is the one that applies now.
-- Planned for key lookups: plans cached while the tables were tiny would otherwise
-- stay sequential scans as the tables grow, until the next ANALYZE.
CREATE FUNCTION tally.refuse_backdating(user_id text, started_at timestamptz, not_before timestamptz)
RETURNS void
LANGUAGE plpgsql STABLE
SET enable_seqscan = off
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    earliest timestamptz;
BEGIN
    SELECT tally.period_start_for(s.period_anchor, p.period, now()) INTO earliest
      FROM tally.subscriptions s JOIN tally.plans p ON p.plan_id = s.plan_id
     WHERE s.user_id = refuse_backdating.user_id;
    earliest := greatest(earliest, refuse_backdating.not_before);
    IF refuse_backdating.started_at < earliest THEN
        RAISE EXCEPTION USING
            ERRCODE = 'TL008',
            MESSAGE = format('started_at %s is too far in the past: this caller may backdate a session to %s at the earliest',
                             to_char(refuse_backdating.started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                             to_char(earliest AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')),
            HINT = 'sessions older than that (or in an earlier billing period) are imported by a caller allowed to import history';
    END IF;
END
$fn$;
COMMENT ON FUNCTION tally.refuse_backdating(text, timestamptz, timestamptz) IS
    'record_session''s backdating bound: raises TL008 when started_at lies before not_before or before the user''s current billing period.';

-- The stored session with this id, for record_session's retry, as row_to_json
-- writes it, and its user: the user's own, else (on one node session ids are unique
-- across users, sessions_session_id_key) another user's, which the caller must
-- refuse; on Citus ids are unique per user. NULLs when there is none. Planned for key
-- lookups, as refuse_backdating. It returns JSON, not a tally.sessions row:
-- tally.distribute() drops the workers' own copies of the tables with CASCADE, which
-- would take a function typed by a table's row along, and the extension with it.
CREATE FUNCTION tally.existing_session(user_id text, session_id uuid, OUT stored json, OUT stored_user_id text)
-- VOLATILE: each statement reads with a snapshot of its own, so a row committed
-- since the INSERT met it is seen.
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    SELECT row_to_json(x), x.user_id INTO existing_session.stored, existing_session.stored_user_id
      FROM tally.sessions x
     WHERE x.user_id = existing_session.user_id AND x.session_id = existing_session.session_id;
    IF NOT FOUND THEN
        SELECT row_to_json(x), x.user_id INTO existing_session.stored, existing_session.stored_user_id
          FROM tally.sessions x
         WHERE x.session_id = existing_session.session_id;
    END IF;
END
$fn$;
COMMENT ON FUNCTION tally.existing_session(text, uuid) IS
    'The stored session with this id as JSON, and its user: the user''s own, else another user''s; NULLs when there is none (record_session''s retry).';

-- Record a session and read the counters it moved, in one call (one round trip for
-- clients). Counting is done by the triggers as for any INSERT; this adds only the
-- idempotent retry, the backdating bound and the read after the write.
--
-- It runs with the caller's rights and search path, so every name in it is
-- qualified (pg_catalog's functions and operators too): an object in a schema the
-- caller (or anyone) can write is never called instead. A function-level SET
-- (search_path, planner settings) would cost every call a GUC save and restore,
-- about a tenth of the call; the statements that need key-lookup planning, the
-- backdating bound and the read of an existing id, are functions of their own
-- with those settings, run only when needed.
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
AS $fn$
#variable_conflict use_column
DECLARE
    -- Type names too: the caller's temporary schema comes first for them.
    inserted tally.sessions;
    stored pg_catalog.json;
    stored_user_id pg_catalog.text;
BEGIN
    IF record_session.not_before IS NOT NULL
       AND record_session.started_at OPERATOR(pg_catalog.<) pg_catalog.now() THEN
        PERFORM tally.refuse_backdating(record_session.user_id, record_session.started_at,
                                        record_session.not_before);
    END IF;
    IF record_session.session_id IS NULL THEN
        -- A new id cannot conflict: a plain INSERT, without the speculative
        -- insertion ON CONFLICT costs.
        INSERT INTO tally.sessions AS x
               (user_id, kind, learning_plan_id, status, started_at, completed_at, duration_seconds)
        VALUES (record_session.user_id, record_session.kind, record_session.learning_plan_id,
                record_session.status, coalesce(record_session.started_at, pg_catalog.now()),
                record_session.completed_at, record_session.duration_seconds)
        RETURNING x.* INTO inserted;
    ELSE
        INSERT INTO tally.sessions AS x
               (session_id, user_id, kind, learning_plan_id, status, started_at, completed_at, duration_seconds)
        VALUES (record_session.session_id, record_session.user_id, record_session.kind,
                record_session.learning_plan_id, record_session.status,
                coalesce(record_session.started_at, pg_catalog.now()),
                record_session.completed_at, record_session.duration_seconds)
        ON CONFLICT DO NOTHING
        RETURNING x.* INTO inserted;
    END IF;
    -- The usage after the write: built from what the INSERT's counting trigger saw
    -- when that covers it, else read from tally.current_usage_document.
    IF FOUND THEN
        RETURN pg_catalog.json_build_object('created', true, 'session', pg_catalog.row_to_json(inserted),
                                            'usage', tally.session_usage_document(inserted.user_id, inserted.session_id));
    END IF;
    -- The id exists: a retry, or a reuse the caller must refuse. A row deleted
    -- meanwhile leaves nothing to return.
    SELECT e.stored, e.stored_user_id INTO stored, stored_user_id
      FROM tally.existing_session(record_session.user_id, record_session.session_id) AS e;
    IF stored IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN pg_catalog.json_build_object('created', false, 'session', stored,
                                        'usage', tally.session_usage_document(stored_user_id, record_session.session_id));
END
$fn$;
COMMENT ON FUNCTION tally.record_session(text, text, uuid, uuid, text, timestamptz, timestamptz, integer, timestamptz) IS
    'INSERT a session unless session_id exists (ON CONFLICT DO NOTHING); returns {created, session, usage}: whether it inserted, the stored session, and tally.current_usage_document for its user. started_at NULL means now(); NULL when the id existed but the row is gone. With not_before, a started_at before it or before the user''s current billing period is refused (TL008).';
