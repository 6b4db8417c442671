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
RESET ROLE;

SET ROLE regress_tally_analyst;
SELECT user_id, practice_sessions_used FROM tally.current_usage WHERE user_id = 'ben';
SELECT count(*) > 0 AS can_read_sessions FROM tally.sessions;
INSERT INTO tally.sessions (user_id, kind) VALUES ('ben', 'practice');
\echo :LAST_ERROR_SQLSTATE
DELETE FROM tally.sessions;
\echo :LAST_ERROR_SQLSTATE
UPDATE tally.usage SET practice_sessions_used = 0;
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT public.consistent();

DROP OWNED BY regress_tally_writer, regress_tally_analyst;
DROP ROLE regress_tally_writer;
DROP ROLE regress_tally_analyst;
