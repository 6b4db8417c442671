-- The grants the README documents, for an API/writer role and an analyst role.
SET timezone = 'UTC';
\set SHOW_CONTEXT never
CREATE ROLE regress_tally_writer;
GRANT USAGE ON SCHEMA tally TO regress_tally_writer;
GRANT SELECT ON ALL TABLES IN SCHEMA tally TO regress_tally_writer;
GRANT INSERT, UPDATE, DELETE ON tally.sessions TO regress_tally_writer;

CREATE ROLE regress_tally_analyst;
GRANT USAGE ON SCHEMA tally TO regress_tally_analyst;
GRANT SELECT ON ALL TABLES IN SCHEMA tally TO regress_tally_analyst;

SET ROLE regress_tally_writer;
-- the writer inserts, completes and deletes sessions; the counters move with no privilege on tally.usage
INSERT INTO tally.sessions (session_id, user_id, kind, status, started_at) VALUES
    ('aaaaaaaa-0000-4000-8000-000000000001', 'ben', 'practice', 'completed', '2026-11-01 10:00+00'),
    ('aaaaaaaa-0000-4000-8000-000000000002', 'ben', 'practice', 'started', '2026-11-01 11:00+00');
UPDATE tally.sessions SET status = 'completed', duration_seconds = 300 WHERE session_id = 'aaaaaaaa-0000-4000-8000-000000000002';
SELECT practice_sessions_used FROM tally.usage WHERE user_id = 'ben' AND period_start = '2026-11-01 00:00+00';
DELETE FROM tally.sessions WHERE session_id = 'aaaaaaaa-0000-4000-8000-000000000001';
SELECT practice_sessions_used FROM tally.usage WHERE user_id = 'ben' AND period_start = '2026-11-01 00:00+00';
-- ...but cannot write the counters themselves
UPDATE tally.usage SET practice_sessions_used = 0;
\echo :LAST_ERROR_SQLSTATE
UPDATE tally.learning_plans SET completed_sessions = 0;
\echo :LAST_ERROR_SQLSTATE
SELECT tally.repair();
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS drift FROM tally.verify();
-- the API's call: the usage it returns counts the new session
SELECT (r->>'created')::boolean AS created, (r->'usage'->'practice_sessions'->>'used')::int AS used
FROM tally.record_session('ben', 'practice') AS r \gset
RESET ROLE;
SELECT :'created' AS created, :used = practice_sessions_used AS counts_it FROM tally.current_usage WHERE user_id = 'ben';

-- tally.record_session needs what its two halves need: the INSERT (with RETURNING,
-- so SELECT on tally.sessions) and the document view, whose own reads run with its
-- owner's privileges, as for any view. The same holds whether the document is built
-- from the trigger's figures or read from the view.
CREATE ROLE regress_tally_recorder;
GRANT USAGE ON SCHEMA tally TO regress_tally_recorder;
GRANT SELECT, INSERT ON tally.sessions TO regress_tally_recorder;
GRANT SELECT ON tally.current_usage_document TO regress_tally_recorder;
SET ROLE regress_tally_recorder;
-- (On Citus this is refused: it reads the view's tables on the shards as the caller.
-- The error names whichever shard answers first, so only its SQLSTATE is shown.)
\set VERBOSITY sqlstate
SELECT (r->>'created')::boolean AS created, (r->'usage'->'practice_sessions'->>'used')::int AS used
FROM tally.record_session('ben', 'practice') AS r \gset
\set VERBOSITY default
SELECT count(*) FROM tally.learning_plans;
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT :'created' AS created, :used = practice_sessions_used AS counts_it FROM tally.current_usage WHERE user_id = 'ben';
REVOKE SELECT ON tally.current_usage_document FROM regress_tally_recorder;
SET ROLE regress_tally_recorder;
SELECT tally.record_session('ben', 'practice', 'aaaaaaaa-0000-4000-8000-000000000003');
\echo :LAST_ERROR_SQLSTATE
SELECT tally.record_session('ben', 'warmup', 'aaaaaaaa-0000-4000-8000-000000000004');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT count(*) AS refused_rows FROM tally.sessions WHERE session_id IN ('aaaaaaaa-0000-4000-8000-000000000003', 'aaaaaaaa-0000-4000-8000-000000000004');

SET ROLE regress_tally_analyst;
SELECT count(*) AS readable FROM tally.current_usage WHERE user_id = 'ben';
SELECT count(*) > 0 AS can_read_sessions FROM tally.sessions;
INSERT INTO tally.sessions (user_id, kind) VALUES ('ben', 'practice');
\echo :LAST_ERROR_SQLSTATE
DELETE FROM tally.sessions;
\echo :LAST_ERROR_SQLSTATE
UPDATE tally.usage SET practice_sessions_used = 0;
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT public.consistent();

DROP OWNED BY regress_tally_writer, regress_tally_analyst, regress_tally_recorder;
DROP ROLE regress_tally_writer;
DROP ROLE regress_tally_analyst;
DROP ROLE regress_tally_recorder;
