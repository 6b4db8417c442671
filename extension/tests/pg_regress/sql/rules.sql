-- Every rule is enforced with a clear error and a SQLSTATE, and nothing is written.
SET timezone = 'UTC';
\set SHOW_CONTEXT never
CREATE TEMP TABLE before_counts AS
SELECT (SELECT count(*) FROM tally.sessions) AS sessions, (SELECT sum(practice_sessions_used + assessments_used) FROM tally.usage) AS used;
CREATE FUNCTION pg_temp.nothing_written() RETURNS text LANGUAGE sql AS $$
    SELECT CASE WHEN (SELECT count(*) FROM tally.sessions) = b.sessions
                 AND (SELECT sum(practice_sessions_used + assessments_used) FROM tally.usage) = b.used
           THEN 'nothing written' ELSE 'PARTIAL WRITE' END FROM before_counts b
$$;

INSERT INTO tally.sessions (session_id, user_id, kind, status, started_at) VALUES
    ('66666666-0000-4000-8000-000000000001', 'ana', 'practice', 'started', '2026-10-01 10:00+00'),
    ('66666666-0000-4000-8000-000000000002', 'ana', 'practice', 'completed', '2026-10-01 11:00+00'),
    ('66666666-0000-4000-8000-000000000003', 'ana', 'practice', 'abandoned', '2026-10-01 12:00+00');
-- Of rows without completed_at, only the completed one gets it filled in.
SELECT status, completed_at IS NOT NULL AS has_completed_at FROM tally.sessions
 WHERE session_id IN ('66666666-0000-4000-8000-000000000001', '66666666-0000-4000-8000-000000000002',
                      '66666666-0000-4000-8000-000000000003')
 ORDER BY session_id;
-- ben's learning plan, with one completed session
INSERT INTO tally.learning_plans (learning_plan_id, user_id, title) VALUES ('66666666-0000-4000-8000-0000000000a0', 'ben', 'Travel');
INSERT INTO tally.sessions (user_id, kind, learning_plan_id, started_at)
VALUES ('ben', 'learning_plan', '66666666-0000-4000-8000-0000000000a0', '2026-10-01 13:00+00');
TRUNCATE before_counts;
INSERT INTO before_counts SELECT (SELECT count(*) FROM tally.sessions), (SELECT sum(practice_sessions_used + assessments_used) FROM tally.usage);

-- unknown kind: fail closed
INSERT INTO tally.sessions (user_id, kind) VALUES ('ana', 'speaking_club');
\echo :LAST_ERROR_SQLSTATE
-- one bad row rejects the whole statement
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('ana', 'practice', '2026-10-02 10:00+00'), ('ana', 'nope', '2026-10-02 10:00+00');
\echo :LAST_ERROR_SQLSTATE
-- unknown user
INSERT INTO tally.sessions (user_id, kind) VALUES ('nobody', 'practice');
\echo :LAST_ERROR_SQLSTATE
-- row checks; terse because their DETAIL shows the generated session_id and now()
\set VERBOSITY terse
-- started_at more than 5 minutes ahead
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('ana', 'practice', now() + interval '6 minutes');
\echo :LAST_ERROR_SQLSTATE
-- infinite start
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('ana', 'practice', '-infinity');
\echo :LAST_ERROR_SQLSTATE
-- unknown status, negative duration, completed before started, started with completed_at
INSERT INTO tally.sessions (user_id, kind, status) VALUES ('ana', 'practice', 'done');
\echo :LAST_ERROR_SQLSTATE
INSERT INTO tally.sessions (user_id, kind, duration_seconds) VALUES ('ana', 'practice', -1);
\echo :LAST_ERROR_SQLSTATE
INSERT INTO tally.sessions (user_id, kind, started_at, completed_at) VALUES ('ana', 'practice', '2026-10-02 10:00+00', '2026-10-02 09:00+00');
\echo :LAST_ERROR_SQLSTATE
INSERT INTO tally.sessions (user_id, kind, status, started_at, completed_at) VALUES ('ana', 'practice', 'started', '2026-10-02 10:00+00', '2026-10-02 11:00+00');
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default
-- learning plan of another user
INSERT INTO tally.sessions (user_id, kind, learning_plan_id, started_at)
VALUES ('ana', 'learning_plan', '66666666-0000-4000-8000-0000000000a0', '2026-10-02 10:00+00');
\echo :LAST_ERROR_SQLSTATE
SELECT pg_temp.nothing_written();

-- status changes: only started -> completed and started -> abandoned
UPDATE tally.sessions SET status = 'started' WHERE session_id = '66666666-0000-4000-8000-000000000002';
\echo :LAST_ERROR_SQLSTATE
UPDATE tally.sessions SET status = 'completed' WHERE session_id = '66666666-0000-4000-8000-000000000003';
\echo :LAST_ERROR_SQLSTATE
UPDATE tally.sessions SET status = 'abandoned' WHERE session_id = '66666666-0000-4000-8000-000000000002';
\echo :LAST_ERROR_SQLSTATE
-- user_id, kind and started_at never change
UPDATE tally.sessions SET user_id = 'ben' WHERE session_id = '66666666-0000-4000-8000-000000000001';
\echo :LAST_ERROR_SQLSTATE
UPDATE tally.sessions SET kind = 'assessment' WHERE session_id = '66666666-0000-4000-8000-000000000001';
\echo :LAST_ERROR_SQLSTATE
UPDATE tally.sessions SET started_at = started_at - interval '1 day' WHERE session_id = '66666666-0000-4000-8000-000000000001';
\echo :LAST_ERROR_SQLSTATE
-- a finished session changes only duration_seconds
UPDATE tally.sessions SET completed_at = completed_at + interval '1 minute' WHERE session_id = '66666666-0000-4000-8000-000000000002';
\echo :LAST_ERROR_SQLSTATE
UPDATE tally.sessions SET duration_seconds = 42 WHERE session_id = '66666666-0000-4000-8000-000000000002';
-- a multi-row UPDATE with one forbidden row changes nothing
UPDATE tally.sessions SET status = 'completed' WHERE session_id::text LIKE '66666666%' AND status <> 'completed';
\echo :LAST_ERROR_SQLSTATE
SELECT session_id, status, duration_seconds FROM tally.sessions WHERE session_id::text LIKE '66666666%' ORDER BY 1;

-- TRUNCATE of sessions (also through a cascade)
TRUNCATE tally.sessions;
\echo :LAST_ERROR_SQLSTATE
TRUNCATE tally.subscriptions CASCADE;
\echo :LAST_ERROR_SQLSTATE

-- derived counters reject direct writes, superusers included
SELECT rolsuper AS running_as_superuser FROM pg_roles WHERE rolname = current_user;
INSERT INTO tally.usage (user_id, period_start, period_end, practice_sessions_used) VALUES ('ana', '2020-01-01', '2020-02-01', 5);
\echo :LAST_ERROR_SQLSTATE
UPDATE tally.usage SET practice_sessions_used = 0;
\echo :LAST_ERROR_SQLSTATE
DELETE FROM tally.usage;
\echo :LAST_ERROR_SQLSTATE
TRUNCATE tally.usage;
\echo :LAST_ERROR_SQLSTATE
UPDATE tally.learning_plans SET completed_sessions = 99;
\echo :LAST_ERROR_SQLSTATE
-- a new learning plan always starts from zero completed sessions
INSERT INTO tally.learning_plans (learning_plan_id, user_id, completed_sessions) VALUES ('77777777-0000-4000-8000-000000000001', 'ana', 5);
SELECT completed_sessions FROM tally.learning_plans WHERE learning_plan_id = '77777777-0000-4000-8000-000000000001';
-- other columns of a learning plan stay editable
UPDATE tally.learning_plans SET title = 'Renamed' WHERE learning_plan_id = '77777777-0000-4000-8000-000000000001';
SELECT pg_temp.nothing_written();

-- a learning plan with completed sessions cannot be deleted
DELETE FROM tally.learning_plans WHERE learning_plan_id = '66666666-0000-4000-8000-0000000000a0';
\echo :LAST_ERROR_SQLSTATE

-- a kind's counter is fixed once completed sessions of it exist; unused kinds may be remapped
UPDATE tally.session_kinds SET counter = 'assessments' WHERE kind = 'practice';
\echo :LAST_ERROR_SQLSTATE
INSERT INTO tally.session_kinds VALUES ('shadowing', 'none');
UPDATE tally.session_kinds SET counter = 'practice_sessions' WHERE kind = 'shadowing';
SELECT * FROM tally.session_kinds ORDER BY kind;
INSERT INTO tally.session_kinds VALUES ('bad', 'minutes');
\echo :LAST_ERROR_SQLSTATE

-- subscriptions and plans: a user id never changes
UPDATE tally.subscriptions SET user_id = 'anna' WHERE user_id = 'ana';
\echo :LAST_ERROR_SQLSTATE
INSERT INTO tally.subscriptions (user_id, plan_id) VALUES ('gus', 'unlimited');
UPDATE tally.subscriptions SET user_id = 'gustav' WHERE user_id = 'gus';
\echo :LAST_ERROR_SQLSTATE
DELETE FROM tally.subscriptions WHERE user_id = 'gus';
\set VERBOSITY terse
INSERT INTO tally.subscriptions (user_id, plan_id) VALUES ('', 'unlimited');
\echo :LAST_ERROR_SQLSTATE
INSERT INTO tally.plans (plan_id, display_name, period) VALUES ('never', 'Never', '0 days');
\echo :LAST_ERROR_SQLSTATE
INSERT INTO tally.plans (plan_id, display_name, period) VALUES ('odd', 'Odd', '1 month -40 days');
\echo :LAST_ERROR_SQLSTATE
INSERT INTO tally.plans (plan_id, display_name, practice_sessions_limit) VALUES ('neg', 'Negative', -1);
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default
SELECT public.consistent();
