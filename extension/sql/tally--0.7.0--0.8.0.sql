-- tally 0.7.0 -> 0.8.0: tally.record_session written in the library instead of
-- PL/pgSQL (the same statements, arguments, defaults, rights and answer). See
-- CHANGELOG.md.
\echo Use "ALTER EXTENSION tally UPDATE TO '0.8.0'" to load this file. \quit

-- Record a session and read the counters it moved, in one call (one round trip for
-- clients). Counting is done by the triggers as for any INSERT; this adds only the
-- idempotent retry, the backdating bound and the read after the write. Written in the
-- library (src/record.rs): its statements, prepared once per connection, are an INSERT
-- (ON CONFLICT DO NOTHING when the session has an id), tally.existing_session for a
-- retry and tally.refuse_backdating when not_before is given and started_at lies in
-- the past; its answer is written by tally.record_session_answer.
--
-- It runs with the caller's rights and search path, so every name in its statements
-- is qualified (pg_catalog's functions too) and their parameters are typed by OID: an
-- object in a schema the caller (or anyone) can write is never used instead. The
-- statements that need key-lookup planning, the backdating bound and the read of an
-- existing id, are functions of their own with those settings, run only when needed.
-- (CREATE OR REPLACE keeps the function's grants and comment.)
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
VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'tally_record_session';
