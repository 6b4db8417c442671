-- Counting keeps plans and kinds per connection (extension/src/reference.rs). A
-- change to either applies from the next row counted: later in the transaction
-- that made it, after a rollback to before it, and in the same statement.
SET timezone = 'UTC';
\set SHOW_CONTEXT never
INSERT INTO tally.plans (plan_id, display_name, practice_sessions_limit, assessments_limit) VALUES ('pc_plan', 'Changing', 2, 1);
INSERT INTO tally.subscriptions (user_id, plan_id, period_anchor) VALUES ('pc_dana', 'pc_plan', '2026-01-01 00:00+00');
-- one row per statement: the path that answers from the kept plan
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('pc_dana', 'practice', '2026-03-01 10:00+00');
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('pc_dana', 'practice', '2026-03-02 10:00+00');
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('pc_dana', 'practice', '2026-03-03 10:00+00');
\echo :LAST_ERROR_SQLSTATE
-- a higher limit applies to the next row
UPDATE tally.plans SET practice_sessions_limit = 3 WHERE plan_id = 'pc_plan';
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('pc_dana', 'practice', '2026-03-03 10:00+00');
SELECT * FROM public.usage_by_period WHERE user_id = 'pc_dana';
-- a higher limit rolled back no longer applies, nor one rolled back to a savepoint
BEGIN;
UPDATE tally.plans SET practice_sessions_limit = 10 WHERE plan_id = 'pc_plan';
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('pc_dana', 'practice', '2026-03-04 10:00+00');
ROLLBACK;
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('pc_dana', 'practice', '2026-03-04 10:00+00');
\echo :LAST_ERROR_SQLSTATE
BEGIN;
SAVEPOINT raised;
UPDATE tally.plans SET practice_sessions_limit = 10 WHERE plan_id = 'pc_plan';
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('pc_dana', 'practice', '2026-03-04 10:00+00');
ROLLBACK TO SAVEPOINT raised;
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('pc_dana', 'practice', '2026-03-04 10:00+00');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- a lower limit made in the same statement as the insert applies to it
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('pc_dana', 'assessment', '2026-03-05 10:00+00');
WITH lowered AS (UPDATE tally.plans SET practice_sessions_limit = 1 WHERE plan_id = 'pc_plan' RETURNING plan_id)
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('pc_dana', 'practice', '2026-04-01 10:00+00'), ('pc_dana', 'practice', '2026-04-02 10:00+00');
\echo :LAST_ERROR_SQLSTATE
SELECT practice_sessions_limit FROM tally.plans WHERE plan_id = 'pc_plan';
-- a plan deleted and made again under the same id is read anew
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('pc_dana', 'assessment', '2026-04-01 10:00+00');
BEGIN;
UPDATE tally.subscriptions SET plan_id = 'tiny' WHERE user_id = 'pc_dana';
DELETE FROM tally.plans WHERE plan_id = 'pc_plan';
INSERT INTO tally.plans (plan_id, display_name, practice_sessions_limit, assessments_limit) VALUES ('pc_plan', 'Changing', 5, 5);
UPDATE tally.subscriptions SET plan_id = 'pc_plan' WHERE user_id = 'pc_dana';
COMMIT;
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('pc_dana', 'assessment', '2026-04-02 10:00+00');
SELECT * FROM public.usage_by_period WHERE user_id = 'pc_dana';

-- A kind's new counter applies to the next row: a kind that counted nothing, in
-- use only by abandoned sessions, now counts assessments.
INSERT INTO tally.session_kinds VALUES ('pc_drill', 'none');
INSERT INTO tally.sessions (user_id, kind, status, started_at) VALUES ('pc_dana', 'pc_drill', 'abandoned', '2026-05-01 10:00+00');
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('pc_dana', 'pc_drill', '2026-05-01 11:00+00');
SELECT * FROM public.usage_by_period WHERE user_id = 'pc_dana' AND period = '2026-05-01';
DELETE FROM tally.sessions WHERE user_id = 'pc_dana' AND kind = 'pc_drill' AND status = 'completed';
UPDATE tally.session_kinds SET counter = 'assessments' WHERE kind = 'pc_drill';
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('pc_dana', 'pc_drill', '2026-05-02 10:00+00');
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('pc_dana', 'pc_drill', '2026-05-03 10:00+00');
SELECT * FROM public.usage_by_period WHERE user_id = 'pc_dana' AND period = '2026-05-01';

-- Writes made as a replica (logical replication's apply, a restore) are heard too.
SET session_replication_role = replica;
UPDATE tally.session_kinds SET counter = 'practice_sessions' WHERE kind = 'warmup';
RESET session_replication_role;
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('pc_dana', 'warmup', '2026-06-01 10:00+00');
SELECT * FROM public.usage_by_period WHERE user_id = 'pc_dana' AND period = '2026-06-01';
DELETE FROM tally.sessions WHERE user_id = 'pc_dana' AND kind = 'warmup';
SET session_replication_role = replica;
UPDATE tally.session_kinds SET counter = 'none' WHERE kind = 'warmup';
RESET session_replication_role;
SELECT public.consistent();

-- Nothing is kept from a table whose forget trigger is disabled (or missing, as on
-- a database before 0.6.0): a change made meanwhile is read at the next row.
ALTER TABLE tally.plans DISABLE TRIGGER plans_forget;
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('pc_dana', 'practice', '2026-07-01 10:00+00');
UPDATE tally.plans SET practice_sessions_limit = 1 WHERE plan_id = 'pc_plan';
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('pc_dana', 'practice', '2026-07-02 10:00+00');
\echo :LAST_ERROR_SQLSTATE
ALTER TABLE tally.plans ENABLE ALWAYS TRIGGER plans_forget;
SELECT * FROM public.usage_by_period WHERE user_id = 'pc_dana' AND period = '2026-07-01';

-- As a writer role: its rows are counted with the kept plan, a change the plan's
-- owner makes applies to its next row, and it cannot change a plan itself.
CREATE ROLE pc_writer;
GRANT USAGE ON SCHEMA tally TO pc_writer;
GRANT SELECT ON ALL TABLES IN SCHEMA tally TO pc_writer;
GRANT INSERT, UPDATE, DELETE ON tally.sessions TO pc_writer;
UPDATE tally.plans SET practice_sessions_limit = 5 WHERE plan_id = 'pc_plan';
SET ROLE pc_writer;
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('pc_dana', 'practice', '2026-08-01 10:00+00');
RESET ROLE;
UPDATE tally.plans SET practice_sessions_limit = 1 WHERE plan_id = 'pc_plan';
SET ROLE pc_writer;
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('pc_dana', 'practice', '2026-08-02 10:00+00');
\echo :LAST_ERROR_SQLSTATE
UPDATE tally.plans SET practice_sessions_limit = 100 WHERE plan_id = 'pc_plan';
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT * FROM public.usage_by_period WHERE user_id = 'pc_dana' AND period = '2026-08-01';
DROP OWNED BY pc_writer;
DROP ROLE pc_writer;

-- The forget functions serve only their own trigger.
CREATE TEMP TABLE pc_decoy (plan_id text);
CREATE TRIGGER pc_steal BEFORE INSERT ON pc_decoy
    FOR EACH STATEMENT EXECUTE FUNCTION tally.forget_plans();
INSERT INTO pc_decoy VALUES ('x');
\echo :LAST_ERROR_SQLSTATE
CREATE TRIGGER pc_wrong_timing AFTER UPDATE ON tally.session_kinds
    FOR EACH STATEMENT EXECUTE FUNCTION tally.forget_session_kinds();
UPDATE tally.session_kinds SET counter = counter WHERE kind = 'pc_drill';
\echo :LAST_ERROR_SQLSTATE
DROP TRIGGER pc_wrong_timing ON tally.session_kinds;
SELECT tgname, tgenabled FROM pg_trigger
 WHERE tgrelid IN ('tally.plans'::regclass, 'tally.session_kinds'::regclass) AND tgname LIKE '%forget'
 ORDER BY 1;
