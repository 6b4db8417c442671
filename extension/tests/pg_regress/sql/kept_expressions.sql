-- A connection builds the CHECK constraints and trigger WHEN clauses of
-- tally.sessions once, not for every statement (extension/src/expressions.rs).
-- What it builds must stay what PostgreSQL would build: every change to a
-- constraint, a trigger or a function they call applies from the next statement.
SET timezone = 'UTC';
\set SHOW_CONTEXT never
\set VERBOSITY terse
INSERT INTO tally.subscriptions (user_id, plan_id, period_anchor) VALUES ('ke_eli', 'unlimited', '2026-01-01 00:00+00');
-- built by the first statement, used by the next ones
INSERT INTO tally.sessions (user_id, kind, started_at, duration_seconds) VALUES ('ke_eli', 'practice', '2026-04-01 10:00+00', 600);
INSERT INTO tally.sessions (user_id, kind, started_at, duration_seconds) VALUES ('ke_eli', 'practice', '2026-04-01 11:00+00', -1);
\echo :LAST_ERROR_SQLSTATE
INSERT INTO tally.sessions (user_id, kind, status, started_at) VALUES ('ke_eli', 'practice', 'finished', '2026-04-01 11:00+00');
INSERT INTO tally.sessions (user_id, kind, started_at, completed_at) VALUES ('ke_eli', 'practice', '2026-04-01 11:00+00', '2026-04-01 10:00+00');
-- the WHEN clause of the completed_at fill-in: filled for a completed row only
INSERT INTO tally.sessions (user_id, kind, status, started_at) VALUES ('ke_eli', 'practice', 'started', '2026-04-02 10:00+00')
RETURNING status, completed_at;
INSERT INTO tally.sessions (user_id, kind, started_at, completed_at) VALUES ('ke_eli', 'practice', '2026-04-02 11:00+00', '2026-04-02 11:30+00')
RETURNING status, completed_at;

-- a constraint added by the owner applies from the next statement, and one dropped
-- no longer does
ALTER TABLE tally.sessions ADD CONSTRAINT ke_short_sessions CHECK (duration_seconds < 3600);
INSERT INTO tally.sessions (user_id, kind, started_at, duration_seconds) VALUES ('ke_eli', 'practice', '2026-04-03 10:00+00', 4000);
\echo :LAST_ERROR_SQLSTATE
ALTER TABLE tally.sessions DROP CONSTRAINT ke_short_sessions;
INSERT INTO tally.sessions (user_id, kind, started_at, duration_seconds) VALUES ('ke_eli', 'practice', '2026-04-03 10:00+00', 4000);

-- a constraint calling a SQL function, which planning inlines: a new body of the
-- function applies from the next statement
CREATE FUNCTION public.ke_longest() RETURNS integer IMMUTABLE LANGUAGE sql AS 'SELECT 5000';
ALTER TABLE tally.sessions ADD CONSTRAINT ke_not_too_long CHECK (duration_seconds <= public.ke_longest());
INSERT INTO tally.sessions (user_id, kind, started_at, duration_seconds) VALUES ('ke_eli', 'practice', '2026-04-04 10:00+00', 4500);
CREATE OR REPLACE FUNCTION public.ke_longest() RETURNS integer IMMUTABLE LANGUAGE sql AS 'SELECT 4000';
INSERT INTO tally.sessions (user_id, kind, started_at, duration_seconds) VALUES ('ke_eli', 'practice', '2026-04-04 11:00+00', 4500);
\echo :LAST_ERROR_SQLSTATE
CREATE OR REPLACE FUNCTION public.ke_longest() RETURNS integer IMMUTABLE LANGUAGE sql AS 'SELECT 5000';
INSERT INTO tally.sessions (user_id, kind, started_at, duration_seconds) VALUES ('ke_eli', 'practice', '2026-04-04 11:00+00', 4500);

-- a trigger's WHEN clause: a new clause applies from the next statement
CREATE FUNCTION public.ke_say() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE NOTICE 'when clause passed for duration %', NEW.duration_seconds;
    RETURN NEW;
END $$;
CREATE TRIGGER ke_when BEFORE INSERT ON tally.sessions
    FOR EACH ROW WHEN (NEW.duration_seconds = 7) EXECUTE FUNCTION public.ke_say();
INSERT INTO tally.sessions (user_id, kind, started_at, duration_seconds) VALUES ('ke_eli', 'practice', '2026-04-05 10:00+00', 7);
DROP TRIGGER ke_when ON tally.sessions;
CREATE TRIGGER ke_when BEFORE INSERT ON tally.sessions
    FOR EACH ROW WHEN (NEW.duration_seconds = 8) EXECUTE FUNCTION public.ke_say();
INSERT INTO tally.sessions (user_id, kind, started_at, duration_seconds) VALUES ('ke_eli', 'practice', '2026-04-05 11:00+00', 7);
INSERT INTO tally.sessions (user_id, kind, started_at, duration_seconds) VALUES ('ke_eli', 'practice', '2026-04-05 12:00+00', 8);
DROP TRIGGER ke_when ON tally.sessions;

-- Statements nest: a function called for each row of an INSERT changes the
-- constraint's function (the connection builds again) and inserts a session
-- itself. The outer statement keeps testing its rows with what it started with,
-- to its end; the inner one with the new body.
CREATE FUNCTION public.ke_nested(n integer) RETURNS integer LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE OR REPLACE FUNCTION public.ke_longest() RETURNS integer IMMUTABLE LANGUAGE sql AS %L',
                   'SELECT ' || (5000 + n));
    INSERT INTO tally.sessions (user_id, kind, started_at, duration_seconds)
    VALUES ('ke_eli', 'assessment', '2026-04-06 00:00+00'::timestamptz + n * interval '1 hour', 5000 + n);
    RETURN 4900 + n;
END $$;
INSERT INTO tally.sessions (user_id, kind, started_at, duration_seconds)
SELECT 'ke_eli', 'practice', '2026-04-07 00:00+00'::timestamptz + g * interval '1 hour', public.ke_nested(g)
  FROM generate_series(1, 3) g;
SELECT kind, duration_seconds FROM tally.sessions
 WHERE user_id = 'ke_eli' AND started_at >= '2026-04-06' ORDER BY started_at;
-- and a row the outer statement's constraint refuses leaves nothing behind
INSERT INTO tally.sessions (user_id, kind, started_at, duration_seconds)
SELECT 'ke_eli', 'practice', '2026-04-08 00:00+00'::timestamptz + g * interval '1 hour',
       public.ke_nested(g) + CASE WHEN g = 2 THEN 1000 ELSE 0 END
  FROM generate_series(1, 3) g;
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS sessions_after_refusal FROM tally.sessions WHERE user_id = 'ke_eli' AND started_at >= '2026-04-08';

-- As a writer role: its inserts are tested with the connection's build, a
-- constraint the table's owner adds applies to its next one, and it cannot change
-- the table. Its own table named sessions (in pg_temp) keeps its own constraints.
CREATE ROLE ke_writer;
GRANT USAGE ON SCHEMA tally TO ke_writer;
GRANT SELECT ON ALL TABLES IN SCHEMA tally TO ke_writer;
GRANT INSERT, UPDATE, DELETE ON tally.sessions TO ke_writer;
SET ROLE ke_writer;
INSERT INTO tally.sessions (user_id, kind, started_at, duration_seconds) VALUES ('ke_eli', 'practice', '2026-04-05 13:00+00', 60);
INSERT INTO tally.sessions (user_id, kind, started_at, duration_seconds) VALUES ('ke_eli', 'practice', '2026-04-05 14:00+00', -1);
RESET ROLE;
ALTER TABLE tally.sessions ADD CONSTRAINT ke_not_4242 CHECK (duration_seconds <> 4242);
SET ROLE ke_writer;
INSERT INTO tally.sessions (user_id, kind, started_at, duration_seconds) VALUES ('ke_eli', 'practice', '2026-04-05 14:00+00', 4242);
ALTER TABLE tally.sessions DROP CONSTRAINT ke_not_4242;
\echo :LAST_ERROR_SQLSTATE
CREATE TEMP TABLE sessions (user_id text, duration_seconds integer CHECK (duration_seconds > 100000));
INSERT INTO pg_temp.sessions VALUES ('ke_eli', 4000);
INSERT INTO pg_temp.sessions VALUES ('ke_eli', 200000);
DROP TABLE pg_temp.sessions;
RESET ROLE;
ALTER TABLE tally.sessions DROP CONSTRAINT ke_not_4242;
DROP OWNED BY ke_writer;
DROP ROLE ke_writer;

-- Built again for every statement of one transaction (a new body before each
-- insert): past 16 builds in a transaction PostgreSQL builds for each statement
-- again, and every new body still applies.
BEGIN;
DO $$
BEGIN
    FOR i IN 1..20 LOOP
        EXECUTE format('CREATE OR REPLACE FUNCTION public.ke_longest() RETURNS integer IMMUTABLE LANGUAGE sql AS %L',
                       'SELECT ' || (6000 + i));
        INSERT INTO tally.sessions (user_id, kind, started_at, duration_seconds)
        VALUES ('ke_eli', 'practice', '2026-04-09 00:00+00'::timestamptz + i * interval '1 hour', 6000 + i);
    END LOOP;
END $$;
INSERT INTO tally.sessions (user_id, kind, started_at, duration_seconds) VALUES ('ke_eli', 'practice', '2026-04-10 00:00+00', 6021);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
SELECT count(*) AS rolled_back FROM tally.sessions WHERE user_id = 'ke_eli' AND started_at >= '2026-04-09';

ALTER TABLE tally.sessions DROP CONSTRAINT ke_not_too_long;
DROP FUNCTION public.ke_longest(), public.ke_nested(integer), public.ke_say();
SELECT * FROM public.usage_by_period WHERE user_id = 'ke_eli';
SELECT * FROM public.recount_mismatches;
SELECT count(*) AS drift FROM tally.verify();
