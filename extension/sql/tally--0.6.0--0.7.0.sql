-- tally 0.6.0 -> 0.7.0: record_session's answer written in one pass by
-- tally.record_session_answer (the session, the envelope and the usage document),
-- instead of row_to_json and json_build_object around the document; existing_session
-- returns the stored row's columns for it. See CHANGELOG.md.
\echo Use "ALTER EXTENSION tally UPDATE TO '0.7.0'" to load this file. \quit

-- What record_session returns, written by the library.
CREATE FUNCTION tally.record_session_answer(
    created boolean, session_id uuid, user_id text, kind text, learning_plan_id uuid, status text,
    started_at timestamptz, completed_at timestamptz, duration_seconds integer, created_at timestamptz)
RETURNS json
VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'record_session_answer_wrapper';
COMMENT ON FUNCTION tally.record_session_answer(boolean, uuid, text, text, uuid, text, timestamptz, timestamptz, integer, timestamptz) IS
    'What tally.record_session returns: {created, session, usage}, the session as row_to_json writes a tally.sessions row with these columns and usage as tally.session_usage_document gives it.';

-- The retry's read returns columns now (its OUT parameters change: dropped, then
-- created again).
DROP FUNCTION tally.existing_session(text, uuid);
-- The stored session with this id, for record_session's retry: the user's own, else
-- (on one node session ids are unique across users, sessions_session_id_key) another
-- user's, which the caller must refuse; on Citus ids are unique per user. NULLs when
-- there is none. Planned for key lookups, as refuse_backdating. It returns the
-- columns, not a tally.sessions row: tally.distribute() drops the workers' own copies
-- of the tables with CASCADE, which would take a function typed by a table's row
-- along, and the extension with it.
CREATE FUNCTION tally.existing_session(user_id text, session_id uuid,
    OUT stored_session_id uuid, OUT stored_user_id text, OUT stored_kind text,
    OUT stored_learning_plan_id uuid, OUT stored_status text, OUT stored_started_at timestamptz,
    OUT stored_completed_at timestamptz, OUT stored_duration_seconds integer,
    OUT stored_created_at timestamptz)
-- VOLATILE: each statement reads with a snapshot of its own, so a row committed
-- since the INSERT met it is seen.
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    SELECT x.session_id, x.user_id, x.kind, x.learning_plan_id, x.status, x.started_at,
           x.completed_at, x.duration_seconds, x.created_at
      INTO stored_session_id, stored_user_id, stored_kind, stored_learning_plan_id, stored_status,
           stored_started_at, stored_completed_at, stored_duration_seconds, stored_created_at
      FROM tally.sessions x
     WHERE x.user_id = existing_session.user_id AND x.session_id = existing_session.session_id;
    IF NOT FOUND THEN
        SELECT x.session_id, x.user_id, x.kind, x.learning_plan_id, x.status, x.started_at,
               x.completed_at, x.duration_seconds, x.created_at
          INTO stored_session_id, stored_user_id, stored_kind, stored_learning_plan_id, stored_status,
               stored_started_at, stored_completed_at, stored_duration_seconds, stored_created_at
          FROM tally.sessions x
         WHERE x.session_id = existing_session.session_id;
    END IF;
END
$fn$;
COMMENT ON FUNCTION tally.existing_session(text, uuid) IS
    'The stored session with this id, and its user: the user''s own, else another user''s; NULLs when there is none (record_session''s retry).';

-- Record a session and read the counters it moved, in one call (one round trip for
-- clients). Counting is done by the triggers as for any INSERT; this adds only the
-- idempotent retry, the backdating bound and the read after the write. Its answer is
-- written by tally.record_session_answer.
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
    session tally.sessions;
    created pg_catalog.bool;
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
        RETURNING x.* INTO session;
    ELSE
        INSERT INTO tally.sessions AS x
               (session_id, user_id, kind, learning_plan_id, status, started_at, completed_at, duration_seconds)
        VALUES (record_session.session_id, record_session.user_id, record_session.kind,
                record_session.learning_plan_id, record_session.status,
                coalesce(record_session.started_at, pg_catalog.now()),
                record_session.completed_at, record_session.duration_seconds)
        ON CONFLICT DO NOTHING
        RETURNING x.* INTO session;
    END IF;
    created := FOUND;
    IF NOT created THEN
        -- The id exists: a retry, or a reuse the caller must refuse. A row deleted
        -- meanwhile leaves nothing to return.
        SELECT e.* INTO session
          FROM tally.existing_session(record_session.user_id, record_session.session_id) AS e;
        IF session.session_id IS NULL THEN
            RETURN NULL;
        END IF;
    END IF;
    -- The usage after the write: built from what the INSERT's counting trigger saw
    -- when that covers it, else read from tally.current_usage_document.
    RETURN tally.record_session_answer(created, session.session_id, session.user_id, session.kind,
                                       session.learning_plan_id, session.status, session.started_at,
                                       session.completed_at, session.duration_seconds, session.created_at);
END
$fn$;
COMMENT ON FUNCTION tally.record_session(text, text, uuid, uuid, text, timestamptz, timestamptz, integer, timestamptz) IS
    'INSERT a session unless session_id exists (ON CONFLICT DO NOTHING); returns {created, session, usage}: whether it inserted, the stored session, and tally.current_usage_document for its user. started_at NULL means now(); NULL when the id existed but the row is gone. With not_before, a started_at before it or before the user''s current billing period is refused (TL008).';
