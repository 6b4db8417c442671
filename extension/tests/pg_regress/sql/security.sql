-- Hostile roles against the counters and the limits. Stands alone: it creates its
-- own plan, users and roles (the README's writer and analyst) and removes them.
SET client_min_messages = warning;
SET timezone = 'UTC';
\set SHOW_CONTEXT never

INSERT INTO tally.plans (plan_id, display_name, practice_sessions_limit, assessments_limit)
VALUES ('sec_one', 'One of each', 1, 1);
-- Periods that began a day ago, so that sessions of the last hours fall in the
-- current one whatever today's date. Errors that print period ends or now() show
-- their SQLSTATE only (VERBOSITY sqlstate).
INSERT INTO tally.subscriptions (user_id, plan_id, period_anchor) VALUES
    ('sec_ann', 'sec_one', now() - interval '1 day'),
    ('sec_bob', 'sec_one', now() - interval '1 day');
INSERT INTO tally.sessions (user_id, kind) VALUES ('sec_ann', 'practice'), ('sec_bob', 'practice');

CREATE ROLE sec_writer;
GRANT USAGE ON SCHEMA tally TO sec_writer;
GRANT SELECT ON ALL TABLES IN SCHEMA tally TO sec_writer;
GRANT INSERT, UPDATE, DELETE ON tally.sessions TO sec_writer;
CREATE ROLE sec_analyst;
GRANT USAGE ON SCHEMA tally TO sec_analyst;
GRANT SELECT ON ALL TABLES IN SCHEMA tally TO sec_analyst;

-- 1. No trigger function of tally is executable by PUBLIC, so a role cannot bind
-- one to a table of its own (the analyst's temp table here, with a column type
-- whose implicit cast to text would run as the extension owner).
SELECT p.proname
  FROM pg_proc p
 WHERE p.pronamespace = 'tally'::regnamespace
   AND p.prorettype = 'trigger'::regtype
   AND has_function_privilege('sec_analyst', p.oid, 'EXECUTE')
 ORDER BY 1;
-- Functions any role may run: they only read, or check their caller's privileges.
SELECT p.oid::regprocedure AS executable_by_public
  FROM pg_proc p
 WHERE p.pronamespace = 'tally'::regnamespace
   AND (p.proacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(p.proacl) a WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE'))
 ORDER BY p.oid::regprocedure::text;
SET ROLE sec_analyst;
CREATE TEMP TABLE stolen (user_id text);
CREATE TRIGGER steal AFTER DELETE ON stolen REFERENCING OLD TABLE AS tally_old
    FOR EACH STATEMENT EXECUTE FUNCTION tally.subscriptions_drop_usage();
\echo :LAST_ERROR_SQLSTATE
CREATE TRIGGER steal AFTER UPDATE ON stolen
    FOR EACH ROW EXECUTE FUNCTION tally.subscriptions_rebucket();
\echo :LAST_ERROR_SQLSTATE
-- (Citus warns that it keeps temporary objects on the coordinator, naming the
-- backend's temporary schema.)
SET client_min_messages = error;
CREATE TYPE pg_temp.evil AS ENUM ('x');
CREATE FUNCTION pg_temp.evil_to_text(pg_temp.evil) RETURNS text LANGUAGE sql
    AS $$ SELECT 'x' $$;
SET client_min_messages = warning;
CREATE TRIGGER steal AFTER UPDATE ON stolen
    FOR EACH ROW EXECUTE FUNCTION tally.plans_rebucket();
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT rolsuper AS analyst_is_superuser FROM pg_roles WHERE rolname = 'sec_analyst';

-- Even a role allowed to bind them (the owner here) gets a refusal, with nothing
-- read or written, for any table, event, timing or level but the function's own.
CREATE TEMP TABLE decoy (user_id text);
INSERT INTO decoy SELECT user_id FROM tally.subscriptions WHERE user_id LIKE 'sec_%';
CREATE TRIGGER steal AFTER DELETE ON decoy REFERENCING OLD TABLE AS tally_old
    FOR EACH STATEMENT EXECUTE FUNCTION tally.subscriptions_drop_usage();
DELETE FROM decoy;
\echo :LAST_ERROR_SQLSTATE
CREATE TRIGGER wrong_event AFTER DELETE ON tally.sessions REFERENCING OLD TABLE AS tally_new
    FOR EACH STATEMENT EXECUTE FUNCTION tally.sessions_count_insert();
DELETE FROM tally.sessions WHERE user_id = 'sec_ann';
\echo :LAST_ERROR_SQLSTATE
DROP TRIGGER wrong_event ON tally.sessions;
CREATE TRIGGER wrong_level BEFORE UPDATE ON tally.usage
    FOR EACH ROW EXECUTE FUNCTION tally.usage_reject_direct_write();
DROP TRIGGER wrong_level ON tally.usage;
SELECT user_id, practice_sessions_used FROM tally.usage WHERE user_id LIKE 'sec_%' ORDER BY 1;

-- The internal-write mark covers the statements tally itself runs, nothing they
-- set off: a trigger added to tally.learning_plans (by a superuser, even) that
-- writes the counters while tally's own update of the plan runs is refused. (The
-- refusal happens inside tally's statement, and pgrx reports errors raised under
-- it as XX000, with the message kept.)
CREATE FUNCTION public.sec_piggyback() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE tally.usage SET practice_sessions_used = 0 WHERE user_id = NEW.user_id;
    RETURN NULL;
END $$;
CREATE TRIGGER sec_piggyback AFTER UPDATE ON tally.learning_plans
    FOR EACH ROW EXECUTE FUNCTION public.sec_piggyback();
INSERT INTO tally.learning_plans (learning_plan_id, user_id, title)
VALUES ('5ec00000-0000-4000-8000-000000000001', 'sec_bob', 'Plan');
INSERT INTO tally.sessions (user_id, kind, status, learning_plan_id)
VALUES ('sec_bob', 'assessment', 'completed', '5ec00000-0000-4000-8000-000000000001');
\echo :LAST_ERROR_SQLSTATE
DROP TRIGGER sec_piggyback ON tally.learning_plans;
DROP FUNCTION public.sec_piggyback();
SELECT count(*) AS drift FROM tally.verify();

-- 2. Expired reservations pass no limit. sec_ann has used her 1 practice session;
-- sec_bob has used 0 of 1 assessments.
\set VERBOSITY sqlstate
SET ROLE sec_writer;
-- Started sessions dated past the timeout hold no slot, so they may be inserted...
INSERT INTO tally.sessions (session_id, user_id, kind, status, started_at) VALUES
    ('5ec00000-0000-4000-8000-00000000000a', 'sec_bob', 'assessment', 'started', now() - interval '3 hours'),
    ('5ec00000-0000-4000-8000-00000000000b', 'sec_bob', 'assessment', 'started', now() - interval '3 hours'),
    ('5ec00000-0000-4000-8000-00000000000c', 'sec_bob', 'assessment', 'started', now() - interval '3 hours');
-- ...but completing them is checked like new sessions: one fits, then none.
UPDATE tally.sessions SET status = 'completed' WHERE session_id = '5ec00000-0000-4000-8000-00000000000a';
UPDATE tally.sessions SET status = 'completed' WHERE session_id = '5ec00000-0000-4000-8000-00000000000b';
\echo :LAST_ERROR_SQLSTATE
-- all of them at once (the set-based path) likewise
UPDATE tally.sessions SET status = 'completed' WHERE user_id = 'sec_bob' AND status = 'started';
\echo :LAST_ERROR_SQLSTATE
-- abandoning them is always allowed
UPDATE tally.sessions SET status = 'abandoned' WHERE user_id = 'sec_bob' AND status = 'started';
-- With the limit reached, a started session dated past the timeout is refused too:
-- it is checked as taking a slot.
INSERT INTO tally.sessions (user_id, kind, status, started_at)
VALUES ('sec_bob', 'assessment', 'started', now() - interval '3 hours');
\echo :LAST_ERROR_SQLSTATE
SELECT assessments_used, assessments_limit FROM tally.current_usage WHERE user_id = 'sec_bob';

\set VERBOSITY default
-- 3. The reservation timeout is a superuser's setting, like enforce_limits.
SET tally.reservation_timeout = '0';
\echo :LAST_ERROR_SQLSTATE
SET tally.enforce_limits = off;
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
ALTER ROLE sec_writer SET tally.reservation_timeout = '1 hour';
SELECT setconfig FROM pg_db_role_setting WHERE setrole = 'sec_writer'::regrole;
ALTER ROLE sec_writer RESET tally.reservation_timeout;

-- A reservation that expires while its session runs: the slot goes, another
-- session may take it, and the first one can then not complete.
DELETE FROM tally.sessions WHERE user_id = 'sec_bob';
SET tally.reservation_timeout = '1 second';
\set VERBOSITY sqlstate
SET ROLE sec_writer;
INSERT INTO tally.sessions (session_id, user_id, kind, status)
VALUES ('5ec00000-0000-4000-8000-0000000000a1', 'sec_bob', 'assessment', 'started');
SELECT pg_sleep(1.2);
INSERT INTO tally.sessions (session_id, user_id, kind, status)
VALUES ('5ec00000-0000-4000-8000-0000000000a2', 'sec_bob', 'assessment', 'started');
UPDATE tally.sessions SET status = 'completed' WHERE session_id = '5ec00000-0000-4000-8000-0000000000a2';
UPDATE tally.sessions SET status = 'completed' WHERE session_id = '5ec00000-0000-4000-8000-0000000000a1';
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
RESET tally.reservation_timeout;
SELECT assessments_used, assessments_limit FROM tally.current_usage WHERE user_id = 'sec_bob';

-- 4. record_session's backdating bound (the API passes not_before for end users):
-- not before not_before, and never before the user's current billing period.
UPDATE tally.subscriptions SET period_anchor = now() - interval '1 hour' WHERE user_id = 'sec_ann';
SET ROLE sec_writer;
SELECT tally.record_session('sec_ann', 'assessment', started_at => now() - interval '40 days',
                            not_before => now() - interval '24 hours');
\echo :LAST_ERROR_SQLSTATE
SELECT tally.record_session('sec_ann', 'assessment', started_at => now() - interval '2 hours',
                            not_before => now() - interval '24 hours');
\echo :LAST_ERROR_SQLSTATE
SELECT (tally.record_session('sec_ann', 'assessment', started_at => now() - interval '10 minutes',
                             not_before => now() - interval '24 hours'))->'usage'->'assessments'->>'used' AS used;
-- without not_before (a service importing history) the past is open (months before
-- section 7's session, so that no monthly period holds both, whatever today's date)
SELECT (tally.record_session('sec_ann', 'practice', started_at => '2025-06-10 10:00+00'))->'session'->>'status' AS imported;
RESET ROLE;
\set VERBOSITY default

-- 7. tally's SQL functions resolve names in pg_catalog, whatever the caller's
-- search_path puts first.
CREATE SCHEMA sec_evil AUTHORIZATION sec_writer;
SET ROLE sec_writer;
CREATE FUNCTION sec_evil.now() RETURNS timestamptz LANGUAGE plpgsql AS $$ BEGIN RAISE 'hijacked now()'; END $$;
CREATE FUNCTION sec_evil.texteq(text, text) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN RAISE 'hijacked text ='; END $$;
CREATE OPERATOR sec_evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = sec_evil.texteq);
CREATE FUNCTION sec_evil.uuideq(uuid, uuid) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN RAISE 'hijacked uuid ='; END $$;
CREATE OPERATOR sec_evil.= (LEFTARG = uuid, RIGHTARG = uuid, FUNCTION = sec_evil.uuideq);
CREATE FUNCTION sec_evil.current_setting(text, boolean) RETURNS text LANGUAGE plpgsql AS $$ BEGIN RAISE 'hijacked current_setting'; END $$;
-- record_session has no search path of its own (it would cost every call a GUC
-- save and restore): every function and operator in it is qualified.
CREATE FUNCTION sec_evil.timestamptz_lt(timestamptz, timestamptz) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN RAISE 'hijacked timestamptz <'; END $$;
CREATE OPERATOR sec_evil.< (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = sec_evil.timestamptz_lt);
CREATE FUNCTION sec_evil.row_to_json(record) RETURNS json LANGUAGE plpgsql AS $$ BEGIN RAISE 'hijacked row_to_json'; END $$;
CREATE FUNCTION sec_evil.json_build_object(text, boolean, text, json, text, json) RETURNS json LANGUAGE plpgsql AS $$ BEGIN RAISE 'hijacked json_build_object'; END $$;
SET search_path = sec_evil, pg_catalog;
SELECT (tally.record_session('sec_ann', 'practice', '5ec00000-0000-4000-8000-0000000000e1', started_at => '2026-03-01 10:00+00'))->>'created' AS created;
SELECT (tally.record_session('sec_ann', 'practice', '5ec00000-0000-4000-8000-0000000000e1', started_at => '2026-03-01 10:00+00'))->>'created' AS retried;
SELECT (tally.record_session('sec_ann', 'practice', status => 'abandoned',
                             started_at => pg_catalog.now() - interval '10 minutes',
                             not_before => pg_catalog.now() - interval '24 hours'))->>'created' AS backdated;
\set VERBOSITY sqlstate
SELECT tally.record_session('sec_ann', 'practice', started_at => '2026-03-01 10:00+00',
                            not_before => pg_catalog.now() - interval '24 hours');
\set VERBOSITY default
SELECT tally.usage_document('sec_ann') IS NOT NULL AS document;
SELECT tally.reservation_timeout();
SELECT count(*) AS current_usage_rows FROM tally.current_usage WHERE user_id OPERATOR(pg_catalog.=) 'sec_ann';
RESET search_path;
RESET ROLE;
-- The caller's temporary schema comes first for type names: record_session's
-- statements name no type, their parameters are typed by OID. In a new session,
-- since it prepares its statements there on first use.
\c
SET client_min_messages = warning;
SET ROLE sec_writer;
-- (Citus warns that it keeps temporary types on the coordinator.)
SET client_min_messages = error;
CREATE TYPE pg_temp.json AS (hijacked integer);
CREATE TYPE pg_temp.text AS (hijacked integer);
SET client_min_messages = warning;
SELECT (tally.record_session('sec_ann', 'practice', '5ec00000-0000-4000-8000-0000000000e1', started_at => '2026-03-01 10:00+00'))->>'created' AS retried_with_temp_types;
SELECT (tally.record_session('sec_ann', 'practice', status => 'abandoned'))->>'created' AS created_with_temp_types;
RESET ROLE;

SELECT count(*) AS drift FROM tally.verify();
DROP SCHEMA sec_evil CASCADE;
DELETE FROM tally.subscriptions WHERE user_id LIKE 'sec_%';
DELETE FROM tally.plans WHERE plan_id = 'sec_one';
DROP OWNED BY sec_writer, sec_analyst;
DROP ROLE sec_writer;
DROP ROLE sec_analyst;
