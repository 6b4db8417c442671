-- Plan limits: used + in_progress + 1 may not pass the limit, per user, counter and period.
SET timezone = 'UTC';
\set SHOW_CONTEXT never
-- cruz is on plan tiny: 3 practice sessions and 1 assessment a month.
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('cruz', 'practice', '2026-03-01 10:00+00'), ('cruz', 'practice', '2026-03-02 10:00+00');
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('cruz', 'practice', '2026-03-03 10:00+00');
-- the 4th of the month is refused, with tally's own SQLSTATE and the numbers
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('cruz', 'practice', '2026-03-04 10:00+00');
\echo :LAST_ERROR_SQLSTATE
-- another period, another allowance; learning-plan sessions count as practice
INSERT INTO tally.learning_plans (learning_plan_id, user_id) VALUES ('88888888-0000-4000-8000-000000000001', 'cruz');
INSERT INTO tally.sessions (user_id, kind, learning_plan_id, started_at) VALUES ('cruz', 'learning_plan', '88888888-0000-4000-8000-000000000001', '2026-04-01 10:00+00');
-- rows of one statement are checked as if inserted one by one: 2 fit, 3 do not
INSERT INTO tally.sessions (user_id, kind, started_at) SELECT 'cruz', 'practice', '2026-04-02 10:00+00' FROM generate_series(1, 3);
\echo :LAST_ERROR_SQLSTATE
INSERT INTO tally.sessions (user_id, kind, started_at) SELECT 'cruz', 'practice', '2026-04-02 10:00+00' FROM generate_series(1, 2);
SELECT * FROM public.usage_by_period WHERE user_id = 'cruz' ORDER BY user_id, period;
-- a statement spanning users and counters is refused whole when one of them is over
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES
    ('ana', 'practice', '2026-05-01 10:00+00'),
    ('cruz', 'assessment', '2026-05-01 10:00+00'),
    ('cruz', 'assessment', '2026-05-02 10:00+00');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS written FROM tally.sessions WHERE started_at IN ('2026-05-01 10:00+00', '2026-05-02 10:00+00');
-- unmetered kinds and abandoned sessions never count against the limit
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('cruz', 'warmup', '2026-03-05 10:00+00');
INSERT INTO tally.sessions (user_id, kind, status, started_at) VALUES ('cruz', 'practice', 'abandoned', '2026-03-05 10:00+00');
-- unlimited plans never refuse
INSERT INTO tally.sessions (user_id, kind, started_at) SELECT 'ana', 'assessment', '2026-02-01 10:00+00' FROM generate_series(1, 50);
SELECT public.consistent();

-- Reservations: a started session holds a slot until completed, abandoned or too old.
-- Here every session lies in the past, so a long timeout keeps their reservations alive.
SET tally.reservation_timeout = '100 years';
INSERT INTO tally.sessions (session_id, user_id, kind, status, started_at) VALUES
    ('99999999-0000-4000-8000-000000000001', 'cruz', 'practice', 'started', '2026-06-01 10:00+00'),
    ('99999999-0000-4000-8000-000000000002', 'cruz', 'practice', 'started', '2026-06-01 11:00+00'),
    ('99999999-0000-4000-8000-000000000003', 'cruz', 'practice', 'completed', '2026-06-01 12:00+00');
-- 1 used + 2 in progress = 3: nothing else fits, started or completed
INSERT INTO tally.sessions (user_id, kind, status, started_at) VALUES ('cruz', 'practice', 'started', '2026-06-02 10:00+00');
\echo :LAST_ERROR_SQLSTATE
-- abandoning frees a slot
UPDATE tally.sessions SET status = 'abandoned' WHERE session_id = '99999999-0000-4000-8000-000000000002';
INSERT INTO tally.sessions (session_id, user_id, kind, status, started_at)
VALUES ('99999999-0000-4000-8000-000000000004', 'cruz', 'practice', 'started', '2026-06-02 10:00+00');
-- a reservation older than the timeout no longer holds its slot...
SET tally.reservation_timeout = '1 second';
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('cruz', 'practice', '2026-06-03 10:00+00');
-- ...so completing a session whose reservation expired is checked like a new one:
-- these two would take the period to 4 of 3, and are refused
UPDATE tally.sessions SET status = 'completed' WHERE session_id IN ('99999999-0000-4000-8000-000000000001', '99999999-0000-4000-8000-000000000004');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM public.usage_by_period WHERE user_id = 'cruz' AND period = '2026-06-01' ORDER BY user_id, period;
RESET tally.reservation_timeout;
SHOW tally.reservation_timeout;
SELECT tally.reservation_timeout();

-- A timeout that is not a non-negative interval is refused when set.
SET tally.reservation_timeout = 'soon';
\echo :LAST_ERROR_SQLSTATE
SET tally.reservation_timeout = '-5 minutes';
\echo :LAST_ERROR_SQLSTATE
SHOW tally.reservation_timeout;

-- tally.enforce_limits: on by default; a superuser may turn it off for a historical import
SHOW tally.enforce_limits;
SET tally.enforce_limits = off;
INSERT INTO tally.sessions (user_id, kind, started_at) SELECT 'cruz', 'assessment', '2026-08-01 10:00+00' FROM generate_series(1, 3);
RESET tally.enforce_limits;
SELECT * FROM public.usage_by_period WHERE user_id = 'cruz' AND period = '2026-08-01' ORDER BY user_id, period;
-- ...a non-superuser may not
CREATE ROLE regress_tally_limited;
SET ROLE regress_tally_limited;
SET tally.enforce_limits = off;
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
DROP ROLE regress_tally_limited;
-- a typo in a tally setting is an error, not a silently new setting
SET tally.enforce_limit = off;
\echo :LAST_ERROR_SQLSTATE

-- the analyst view subtracts reservations from what remains
INSERT INTO tally.subscriptions (user_id, plan_id, period_anchor) VALUES ('fay', 'tiny', '2026-01-01 00:00+00');
INSERT INTO tally.sessions (user_id, kind, status) VALUES ('fay', 'practice', 'started'), ('fay', 'practice', 'completed');
SELECT user_id, practice_sessions_used, practice_sessions_limit, practice_sessions_remaining,
       assessments_used, assessments_limit, assessments_remaining
FROM tally.current_usage WHERE user_id IN ('fay', 'ana') ORDER BY user_id;
SELECT public.consistent();
