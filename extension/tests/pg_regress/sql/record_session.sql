-- tally.record_session: one call that inserts a session (idempotent on session_id)
-- and returns the counters it moved; tally.usage_document: the same usage document
-- on its own. Period bounds depend on today, so only counters and contents are shown.
SET timezone = 'UTC';
SET client_min_messages = warning;
\set SHOW_CONTEXT never
INSERT INTO tally.subscriptions (user_id, plan_id, period_anchor) VALUES
    ('rosa', 'tiny', '2026-01-01 00:00+00'),
    ('sven', 'unlimited', '2026-01-01 00:00+00');
INSERT INTO tally.learning_plans (learning_plan_id, user_id, title, total_sessions, created_at) VALUES
    ('7a000000-0000-4000-8000-000000000002', 'rosa', 'Second plan', 4, '2026-02-01 00:00+00'),
    ('7a000000-0000-4000-8000-000000000001', 'rosa', 'First plan', 6, '2026-01-01 00:00+00');

-- A new session: created, stored as sent (status completed, completed_at filled in),
-- and the usage read after the write already counts it.
SELECT r->'created' AS created,
       r->'session'->>'session_id' AS session_id,
       r->'session'->>'status' AS status,
       (r->'session'->>'completed_at') IS NOT NULL AS has_completed_at,
       r->'usage'->'practice_sessions' AS practice,
       r->'usage'->'assessments' AS assessments
FROM tally.record_session('rosa', 'learning_plan', '7b000000-0000-4000-8000-000000000001',
                          '7a000000-0000-4000-8000-000000000001') AS r;
SELECT public.consistent();

-- The same id again: not created, the stored session comes back, counted once.
SELECT r->'created' AS created, r->'session'->>'kind' AS kind, r->'usage'->'practice_sessions' AS practice
FROM tally.record_session('rosa', 'learning_plan', '7b000000-0000-4000-8000-000000000001',
                          '7a000000-0000-4000-8000-000000000001') AS r;
-- The same id with other content: also not created and nothing changes; the stored
-- session is returned so that the caller can see it differs (the API answers 409).
SELECT r->'created' AS created, r->'session'->>'kind' AS stored_kind, r->'usage'->'assessments' AS assessments
FROM tally.record_session('rosa', 'assessment', '7b000000-0000-4000-8000-000000000001') AS r;
SELECT count(*) AS rosa_sessions FROM tally.sessions WHERE user_id = 'rosa';
SELECT public.consistent();

-- Learning plans in the order they were created, with their progress.
SELECT p->>'title' AS title, p->'completed_sessions' AS completed, p->'total_sessions' AS total
FROM json_array_elements(tally.usage_document('rosa')->'learning_plans') AS p;

-- A started session reserves a slot: remaining drops, used does not.
SELECT r->'session'->>'status' AS status, r->'usage'->'practice_sessions' AS practice
FROM tally.record_session(user_id => 'rosa', kind => 'practice', status => 'started') AS r;

-- The tiny plan allows 3: one used, one reserved, one left; the next completed one
-- fits, the one after is refused (TL001) and leaves nothing behind.
SELECT r->'usage'->'practice_sessions' AS practice FROM tally.record_session('rosa', 'practice') AS r;
-- (The message names this month's period, so only the SQLSTATE is shown here.)
\set VERBOSITY sqlstate
SELECT tally.record_session('rosa', 'practice', '7b000000-0000-4000-8000-000000000009');
\set VERBOSITY default
SELECT count(*) AS refused_rows FROM tally.sessions WHERE session_id = '7b000000-0000-4000-8000-000000000009';
SELECT public.consistent();

-- Bad input is refused by the same rules as any INSERT, with nothing written.
SELECT tally.record_session('nobody', 'practice');
SELECT tally.record_session('sven', 'no_such_kind');
\set VERBOSITY terse
SELECT tally.record_session('sven', 'practice', duration_seconds => -5);
\set VERBOSITY default
SELECT tally.record_session('sven', 'learning_plan', learning_plan_id => '7a000000-0000-4000-8000-000000000001');
SELECT count(*) AS sven_sessions FROM tally.sessions WHERE user_id = 'sven';

-- An unlimited plan reports null limits and remaining.
SELECT r->'usage'->'practice_sessions' AS practice FROM tally.record_session('sven', 'practice') AS r;

-- The document agrees with tally.current_usage for every subscription.
-- (Every subscription in the database, whatever other files left: only the answer matters.)
SELECT count(*) >= 5 AS several_subscriptions,
       count(*) = count(*) FILTER (WHERE (d->>'plan_id') = cu.plan_id
                          AND (d->>'period_start')::timestamptz = cu.period_start
                          AND (d->>'period_end')::timestamptz = cu.period_end
                          AND (d->'practice_sessions'->>'used')::int = cu.practice_sessions_used
                          AND (d->'practice_sessions'->>'limit')::int IS NOT DISTINCT FROM cu.practice_sessions_limit
                          AND (d->'practice_sessions'->>'remaining')::int IS NOT DISTINCT FROM cu.practice_sessions_remaining
                          AND (d->'assessments'->>'used')::int = cu.assessments_used
                          AND (d->'assessments'->>'limit')::int IS NOT DISTINCT FROM cu.assessments_limit
                          AND (d->'assessments'->>'remaining')::int IS NOT DISTINCT FROM cu.assessments_remaining
                          AND json_array_length(d->'learning_plans') =
                              (SELECT count(*) FROM tally.learning_plans lp WHERE lp.user_id = cu.user_id)) AS all_agree
FROM tally.current_usage cu, LATERAL tally.usage_document(cu.user_id) AS d;
SELECT tally.usage_document('nobody') IS NULL AS no_subscription;

-- After a write, the usage document is built from what the INSERT's counting
-- trigger saw when that covers it, and read from tally.current_usage_document
-- otherwise. Either way it is the document tally.usage_document reads afterwards,
-- to the character. Which way was taken shows in the lookups of the subscription
-- during the call: the foreign key check and the counting trigger make one each,
-- reading the view makes a third. (pg_stat_xact_user_tables counts within the call.)
INSERT INTO tally.plans (plan_id, display_name, practice_sessions_limit, assessments_limit) VALUES
    ('half', 'Half limited', 30, NULL);
-- (Kind 'warmup', counting nothing, comes from setup.sql.)
INSERT INTO tally.subscriptions (user_id, plan_id, period_anchor) VALUES
    ('tomas', 'fluency_builder', '2026-01-01 00:00+00'),
    ('uma', 'half', '2026-01-01 00:00+00');
INSERT INTO tally.learning_plans (learning_plan_id, user_id, title, total_sessions) VALUES
    ('7a000000-0000-4000-8000-000000000003', 'tomas', 'Travel', 10);
CREATE FUNCTION pg_temp.subscription_lookups() RETURNS bigint LANGUAGE sql AS
$$ SELECT idx_scan + seq_scan FROM pg_stat_xact_user_tables WHERE relid = 'tally.subscriptions'::regclass $$;
CREATE FUNCTION pg_temp.record(u text, k text, st text DEFAULT 'completed', started timestamptz DEFAULT NULL,
                               id uuid DEFAULT NULL, plan uuid DEFAULT NULL)
RETURNS TABLE (created boolean, same_as_read boolean, subscription_lookups bigint)
LANGUAGE plpgsql AS $$
DECLARE
    lookups_before bigint;
    lookups_after bigint;
    r json;
BEGIN
    lookups_before := pg_temp.subscription_lookups();
    r := tally.record_session(u, k, id, plan, st, started);
    lookups_after := pg_temp.subscription_lookups();
    RETURN QUERY SELECT (r->>'created')::boolean, (r->'usage')::text = tally.usage_document(u)::text,
                        lookups_after - lookups_before;
END
$$;
-- From the trigger's figures: completed and started sessions of either counter
-- under limits (the limit check counted the reservations), in a learning plan.
SELECT 'completed practice' AS "case", * FROM pg_temp.record('tomas', 'practice', id => '7b000000-0000-4000-8000-000000000010')
UNION ALL SELECT 'started practice', * FROM pg_temp.record('tomas', 'practice', 'started')
UNION ALL SELECT 'completed assessment', * FROM pg_temp.record('tomas', 'assessment')
UNION ALL SELECT 'started assessment', * FROM pg_temp.record('tomas', 'assessment', 'started')
UNION ALL SELECT 'in a learning plan', * FROM pg_temp.record('tomas', 'learning_plan', plan => '7a000000-0000-4000-8000-000000000003')
UNION ALL SELECT 'no limits to report', * FROM pg_temp.record('ana', 'practice')
UNION ALL SELECT 'the limited counter', * FROM pg_temp.record('uma', 'practice');
-- Read from the view: a retry (nothing inserted), a session of an earlier period,
-- a kind that counts nothing, limits not enforced (no reservations counted; tomas
-- has started sessions, so the usage row's bound on them is not 0).
SELECT 'retry' AS "case", * FROM pg_temp.record('tomas', 'practice', id => '7b000000-0000-4000-8000-000000000010')
UNION ALL SELECT 'earlier period', * FROM pg_temp.record('tomas', 'practice', started => now() - interval '40 days')
UNION ALL SELECT 'counts nothing', * FROM pg_temp.record('tomas', 'warmup');
SET tally.enforce_limits = off;
SELECT 'limits off' AS "case", * FROM pg_temp.record('tomas', 'practice');
RESET tally.enforce_limits;
-- An unlimited counter on a plan whose other counter is limited: no limit check, so
-- the reservations the document needs are known only while the usage row's bound
-- says no session is started (tally.usage.started_bound = 0); with one started, the
-- view is read. The bound is kept only by the fast path: with tally.fast_path off
-- (make test-spi) the view is read every time. On Citus the shards do the lookups.
SELECT "case", created, same_as_read,
       subscription_lookups = CASE WHEN EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') THEN 0
                                   WHEN "case" = 'unlimited counter' AND current_setting('tally.fast_path')::boolean THEN 2
                                   ELSE 3 END AS lookups_as_expected
FROM (SELECT 'unlimited counter' AS "case", * FROM pg_temp.record('uma', 'assessment')
      UNION ALL SELECT 'unlimited, one started', * FROM pg_temp.record('uma', 'assessment', 'started')
      UNION ALL SELECT 'unlimited, after it', * FROM pg_temp.record('uma', 'assessment')) r;
-- The trigger's figures describe the moment after its INSERT: any later write in
-- the transaction, or rolling the INSERT back to a savepoint, sends the next reader
-- to the view (no lookup of the subscription for the figures, one for the view).
CREATE FUNCTION pg_temp.document_after(u text, id uuid)
RETURNS TABLE (same_as_read boolean, subscription_lookups bigint)
LANGUAGE plpgsql AS $$
DECLARE
    lookups_before bigint;
    lookups_after bigint;
    d json;
BEGIN
    lookups_before := pg_temp.subscription_lookups();
    d := tally.session_usage_document(u, id);
    lookups_after := pg_temp.subscription_lookups();
    RETURN QUERY SELECT d::text = tally.usage_document(u)::text, lookups_after - lookups_before;
END
$$;
BEGIN;
INSERT INTO tally.sessions (session_id, user_id, kind) VALUES ('7b000000-0000-4000-8000-000000000011', 'uma', 'practice');
SELECT 'right after' AS "case", * FROM pg_temp.document_after('uma', '7b000000-0000-4000-8000-000000000011');
INSERT INTO tally.sessions (session_id, user_id, kind) VALUES ('7b000000-0000-4000-8000-000000000012', 'uma', 'practice');
UPDATE tally.plans SET practice_sessions_limit = 40 WHERE plan_id = 'half';
SELECT 'after a later write' AS "case", * FROM pg_temp.document_after('uma', '7b000000-0000-4000-8000-000000000012');
SAVEPOINT before_insert;
INSERT INTO tally.sessions (session_id, user_id, kind) VALUES ('7b000000-0000-4000-8000-000000000013', 'uma', 'practice');
ROLLBACK TO SAVEPOINT before_insert;
SELECT 'after a rollback' AS "case", * FROM pg_temp.document_after('uma', '7b000000-0000-4000-8000-000000000013');
ROLLBACK;

-- And what they counted, against the recount.
SELECT d->'practice_sessions' AS practice, d->'assessments' AS assessments, d->'learning_plans'->0->'completed_sessions' AS travel_done
FROM tally.usage_document('tomas') AS d;
SELECT public.consistent();

-- The document's JSON is PostgreSQL's own encoding, laid out as json_build_object
-- lays out its objects, for every subscription: text with quotes, backslashes,
-- control characters and non-ASCII, NULL limits, timestamps in the session's time
-- zone. Built from the view and from a recorded session's figures alike.
INSERT INTO tally.subscriptions (user_id, plan_id, period_anchor) VALUES
    (E'q"u\\o\te\n\x01\u00e9', 'half', '2026-01-01 00:00+00');
INSERT INTO tally.learning_plans (learning_plan_id, user_id, title, total_sessions) VALUES
    ('7a000000-0000-4000-8000-000000000004', E'q"u\\o\te\n\x01\u00e9', E'Ti"tle\\ \x02 \u00fc', 3);
SET timezone = 'Asia/Kathmandu';
SELECT created, same_as_read, subscription_lookups FROM pg_temp.record(E'q"u\\o\te\n\x01\u00e9', 'learning_plan', plan => '7a000000-0000-4000-8000-000000000004');
SELECT count(*) >= 6 AS several_subscriptions,
       count(*) FILTER (WHERE d.document::text <> json_build_object(
           'user_id', cu.user_id,
           'plan_id', cu.plan_id,
           'period_start', cu.period_start,
           'period_end', cu.period_end,
           'practice_sessions', json_build_object('used', cu.practice_sessions_used,
                                                  'limit', cu.practice_sessions_limit,
                                                  'remaining', cu.practice_sessions_remaining),
           'assessments', json_build_object('used', cu.assessments_used,
                                            'limit', cu.assessments_limit,
                                            'remaining', cu.assessments_remaining),
           'learning_plans', coalesce((
               SELECT json_agg(json_build_object('learning_plan_id', lp.learning_plan_id,
                                                 'title', lp.title,
                                                 'completed_sessions', lp.completed_sessions,
                                                 'total_sessions', lp.total_sessions)
                               ORDER BY lp.created_at, lp.learning_plan_id)
                 FROM tally.learning_plans lp WHERE lp.user_id = cu.user_id), '[]'::json))::text) AS differing,
       count(*) FILTER (WHERE d.document::text LIKE '%+05:45"%') = count(*) AS in_session_time_zone
FROM tally.current_usage cu JOIN tally.current_usage_document d USING (user_id);
SET timezone = 'UTC';

-- Its errors reach the caller as PostgreSQL raised them, with every field: the API
-- tells a refused row by its constraint's name. Caught in a PL/pgSQL handler (a
-- subtransaction, which also closes what the failed call left open), and the same
-- transaction goes on recording.
DO $$
DECLARE
    state text; constraint_name text; table_name text; column_name text;
BEGIN
    FOR attempt IN 1..4 LOOP
        BEGIN
            CASE attempt
                WHEN 1 THEN PERFORM tally.record_session('sven', 'practice', duration_seconds => -1);
                WHEN 2 THEN PERFORM tally.record_session('sven', 'no such kind');
                WHEN 3 THEN PERFORM tally.record_session('nobody', 'practice');
                ELSE PERFORM tally.record_session('sven', NULL);
            END CASE;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, constraint_name = CONSTRAINT_NAME,
                                    table_name = TABLE_NAME, column_name = COLUMN_NAME;
            -- (On Citus a shard raises it: its names end in the shard's id.)
            RAISE WARNING 'attempt %: % constraint=% table=% column=%', attempt, state,
                regexp_replace(constraint_name, '_[0-9]+$', ''), regexp_replace(table_name, '_[0-9]+$', ''),
                column_name;
        END;
    END LOOP;
    PERFORM tally.record_session('sven', 'practice', status => 'abandoned');
END $$;
SELECT count(*) FILTER (WHERE status = 'abandoned') AS abandoned_after_errors FROM tally.sessions WHERE user_id = 'sven';
-- A limit refused by the counting trigger keeps tally's own code, detail and hint.
DO $$
DECLARE state text; detail text; hint text;
BEGIN
    FOR attempt IN 1..4 LOOP
        PERFORM tally.record_session('rosa', 'assessment');
    END LOOP;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, detail = PG_EXCEPTION_DETAIL, hint = PG_EXCEPTION_HINT;
    RAISE WARNING '% detail=[%] hint=[%]', state, detail IS NOT NULL AND detail <> '', hint IS NOT NULL AND hint <> '';
END $$;
SELECT public.consistent();

-- Key lookups stay key lookups: with statistics that call the tables tiny, the
-- cached plans must still not scan the tables that grow with use. (Counted as a
-- difference inside one transaction: the view also holds not yet flushed counts.)
ANALYZE tally.sessions, tally.usage, tally.learning_plans;
BEGIN;
CREATE TEMP TABLE scans_before ON COMMIT DROP AS
SELECT relid, seq_scan FROM pg_stat_xact_user_tables WHERE schemaname = 'tally';
SELECT count(tally.record_session('sven', 'practice')) AS recorded FROM generate_series(1, 12);
SELECT count(tally.usage_document('sven')) AS read FROM generate_series(1, 12);
SELECT s.relname, s.seq_scan - b.seq_scan AS seq_scans
FROM pg_stat_xact_user_tables s JOIN scans_before b USING (relid)
WHERE s.relname IN ('sessions', 'usage', 'learning_plans')
ORDER BY s.relname;
COMMIT;
SELECT public.consistent();
