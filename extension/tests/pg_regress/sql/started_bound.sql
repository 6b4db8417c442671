-- tally.usage.started_bound: an upper bound on a period's started sessions of
-- metered kinds, kept by the single-row counting path under the usage row lock, or
-- NULL when not known. A limit check counts no reservations when it is 0. These
-- cases show where it is written, where it is forgotten, and that a limit holds in
-- each place where a bound could miss a started session. (One node only: a
-- distributed tally keeps no bound.)
SET client_min_messages = warning;
SET timezone = 'UTC';
-- Sessions of March 2026 hold their reservations (as limits.sql does).
SET tally.reservation_timeout = '100 years';
CREATE FUNCTION pg_temp.bound(u text) RETURNS text LANGUAGE sql AS
$$ SELECT coalesce(started_bound::text, 'NULL') FROM tally.usage
    WHERE user_id = u AND period_start = '2026-03-01 00:00+00' $$;
INSERT INTO tally.subscriptions (user_id, plan_id, period_anchor) VALUES
    ('bo', 'fluency_builder', '2026-01-01 00:00+00'),
    ('cy', 'tiny', '2026-01-01 00:00+00'),
    ('dee', 'tiny', '2026-01-01 00:00+00'),
    ('eli', 'tiny', '2026-01-01 00:00+00');

-- Written and kept: a new row is unknown (made by the upsert), the next single-row
-- write counts and writes it, then each session started adds one and each started
-- session completed takes one away. An abandoned one stays in it (an upper bound)
-- until the next count, which a limit check makes whenever the bound is not 0.
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('bo', 'practice', '2026-03-10 10:00+00');
SELECT 'first session' AS "case", pg_temp.bound('bo');
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('bo', 'practice', '2026-03-10 10:00+00');
SELECT 'second session, counted' AS "case", pg_temp.bound('bo');
INSERT INTO tally.sessions (session_id, user_id, kind, status, started_at) VALUES
    ('5b000000-0000-4000-8000-000000000001', 'bo', 'practice', 'started', '2026-03-10 10:00+00');
SELECT 'one started' AS "case", pg_temp.bound('bo');
INSERT INTO tally.sessions (session_id, user_id, kind, status, started_at) VALUES
    ('5b000000-0000-4000-8000-000000000002', 'bo', 'assessment', 'started', '2026-03-10 10:00+00');
SELECT 'two started' AS "case", pg_temp.bound('bo');
UPDATE tally.sessions SET status = 'completed' WHERE session_id = '5b000000-0000-4000-8000-000000000001';
SELECT 'one completed' AS "case", pg_temp.bound('bo');
UPDATE tally.sessions SET status = 'abandoned' WHERE session_id = '5b000000-0000-4000-8000-000000000002';
SELECT 'one abandoned' AS "case", pg_temp.bound('bo');
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('bo', 'practice', '2026-03-10 10:00+00');
SELECT 'counted again' AS "case", pg_temp.bound('bo');
-- A statement of many rows makes it unknown; a transaction in REPEATABLE READ too
-- (its counter write goes through the upsert).
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('bo', 'practice', '2026-03-10 10:00+00'), ('bo', 'practice', '2026-03-10 11:00+00');
SELECT 'many rows' AS "case", pg_temp.bound('bo');
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('bo', 'practice', '2026-03-10 10:00+00');
SELECT 'counted' AS "case", pg_temp.bound('bo');
BEGIN ISOLATION LEVEL REPEATABLE READ;
INSERT INTO tally.sessions (user_id, kind, status, started_at) VALUES ('bo', 'practice', 'started', '2026-03-10 10:00+00');
COMMIT;
SELECT 'repeatable read' AS "case", pg_temp.bound('bo');
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('bo', 'practice', '2026-03-10 10:00+00');
SELECT 'counted' AS "case", pg_temp.bound('bo');

-- Only tally writes it.
UPDATE tally.usage SET started_bound = 0 WHERE user_id = 'bo';

-- Sessions written while counting was off: a started session the bound never saw.
-- tally.repair() forgets every bound, so that the limit holds again. cy's plan
-- allows 3 practice sessions: 2 completed and 1 started leave no room.
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('cy', 'practice', '2026-03-10 10:00+00');
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('cy', 'practice', '2026-03-10 10:00+00');
ALTER TABLE tally.sessions DISABLE TRIGGER sessions_count_insert;
INSERT INTO tally.sessions (user_id, kind, status, started_at) VALUES ('cy', 'practice', 'started', '2026-03-10 10:00+00');
ALTER TABLE tally.sessions ENABLE ALWAYS TRIGGER sessions_count_insert;
SELECT 'written past the trigger' AS "case", pg_temp.bound('cy');
SELECT tally.repair() AS fixed;
SELECT 'after repair' AS "case", pg_temp.bound('cy');
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('cy', 'practice', '2026-03-10 10:00+00');

-- Started sessions written past the triggers leave no drift for verify() to find
-- (they count nothing yet), but the bound never saw them. Completing one through
-- the counting path would take the bound below zero: that is not a bound, so it
-- becomes unknown and the next limit check counts. fay's plan allows 4 practice
-- sessions: 3 completed and the other started one leave no room.
INSERT INTO tally.plans (plan_id, display_name, practice_sessions_limit) VALUES ('four', 'Four', 4);
INSERT INTO tally.subscriptions (user_id, plan_id, period_anchor) VALUES ('fay', 'four', '2026-01-01 00:00+00');
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('fay', 'practice', '2026-03-10 10:00+00');
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('fay', 'practice', '2026-03-10 10:30+00');
SELECT 'fay, counted' AS "case", pg_temp.bound('fay');
SET session_replication_role = replica;
INSERT INTO tally.sessions (session_id, user_id, kind, status, started_at) VALUES
    ('5f000000-0000-4000-8000-000000000001', 'fay', 'practice', 'started', '2026-03-10 11:00+00'),
    ('5f000000-0000-4000-8000-000000000002', 'fay', 'practice', 'started', '2026-03-10 11:00+00');
RESET session_replication_role;
SELECT count(*) AS drift FROM tally.verify();
UPDATE tally.sessions SET status = 'completed' WHERE session_id = '5f000000-0000-4000-8000-000000000001';
SELECT 'fay, a session the bound never saw completed' AS "case", pg_temp.bound('fay');
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('fay', 'practice', '2026-03-10 12:00+00');
SELECT practice_sessions_used FROM tally.usage WHERE user_id = 'fay';

-- A kind that counted nothing starts counting: its started sessions were never in
-- any bound, which are all forgotten.
INSERT INTO tally.session_kinds VALUES ('stretching', 'none');
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('dee', 'practice', '2026-03-10 10:00+00');
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('dee', 'practice', '2026-03-10 10:00+00');
INSERT INTO tally.sessions (user_id, kind, status, started_at) VALUES ('dee', 'stretching', 'started', '2026-03-10 10:00+00');
SELECT 'a started session that counts nothing' AS "case", pg_temp.bound('dee');
UPDATE tally.session_kinds SET counter = 'practice_sessions' WHERE kind = 'stretching';
SELECT 'its kind counts now' AS "case", pg_temp.bound('dee');
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('dee', 'practice', '2026-03-10 10:00+00');

-- A started session whose reservation expired stays in the bound (it is started)
-- but holds no slot: the count finds it and lets the session in.
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('eli', 'practice', '2026-03-10 10:00+00');
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('eli', 'practice', '2026-03-10 10:00+00');
INSERT INTO tally.sessions (user_id, kind, status, started_at) VALUES ('eli', 'practice', 'started', '2026-03-10 10:00+00');
SET tally.reservation_timeout = '1 second';
SELECT 'expired reservation' AS "case", pg_temp.bound('eli');
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('eli', 'practice', '2026-03-10 10:00+00');
SELECT 'counted' AS "case", pg_temp.bound('eli');
RESET tally.reservation_timeout;

-- Nothing else drifted, and no bound is below the started sessions it bounds.
SELECT * FROM public.recount_mismatches;
SELECT * FROM tally.verify();
SELECT u.user_id, u.started_bound, count(*) AS started
  FROM tally.usage u
  JOIN tally.sessions x ON x.user_id = u.user_id AND x.started_at >= u.period_start AND x.started_at < u.period_end
  JOIN tally.session_kinds k ON k.kind = x.kind
 WHERE x.status = 'started' AND k.counter <> 'none'
 GROUP BY 1, 2
HAVING count(*) > u.started_bound;

-- The README's roles: the writer moves the bound by writing sessions, with no
-- privilege on tally.usage, and the limit holds for it; neither it nor the analyst
-- can write the bound.
CREATE ROLE regress_bound_writer;
GRANT USAGE ON SCHEMA tally TO regress_bound_writer;
GRANT SELECT ON ALL TABLES IN SCHEMA tally TO regress_bound_writer;
GRANT INSERT, UPDATE, DELETE ON tally.sessions TO regress_bound_writer;
CREATE ROLE regress_bound_analyst;
GRANT USAGE ON SCHEMA tally TO regress_bound_analyst;
GRANT SELECT ON ALL TABLES IN SCHEMA tally TO regress_bound_analyst;
INSERT INTO tally.subscriptions (user_id, plan_id, period_anchor) VALUES ('bw_user', 'tiny', '2026-01-01 00:00+00');
-- (The timeout is a superuser's setting; the writer's session keeps it.)
SET tally.reservation_timeout = '100 years';
SET ROLE regress_bound_writer;
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('bw_user', 'practice', '2026-03-10 10:00+00');
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('bw_user', 'practice', '2026-03-10 11:00+00');
SELECT 'the writer, counted' AS "case", pg_temp.bound('bw_user');
INSERT INTO tally.sessions (user_id, kind, status, started_at) VALUES ('bw_user', 'practice', 'started', '2026-03-10 12:00+00');
SELECT 'the writer, one started' AS "case", pg_temp.bound('bw_user');
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('bw_user', 'practice', '2026-03-10 13:00+00');
UPDATE tally.usage SET started_bound = 0 WHERE user_id = 'bw_user';
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
RESET tally.reservation_timeout;
SET ROLE regress_bound_analyst;
UPDATE tally.usage SET started_bound = 0 WHERE user_id = 'bw_user';
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
DROP OWNED BY regress_bound_writer, regress_bound_analyst;
DROP ROLE regress_bound_writer;
DROP ROLE regress_bound_analyst;
