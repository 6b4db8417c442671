-- Every write path keeps the invariant, checked after each statement against an
-- independent recount (public.recount_mismatches) and tally.verify().
SET timezone = 'UTC';

-- single and multi-row INSERT, backdated sessions land in their own period
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('ana', 'practice', '2026-03-10 09:00+00');
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES
    ('ana', 'practice', '2026-03-11 09:00+00'),
    ('ana', 'assessment', '2026-03-31 23:59:59+00'),
    ('ana', 'practice', '2026-04-01 00:00+00'),
    ('ben', 'practice', '2026-03-15 12:00+00');
SELECT * FROM public.usage_by_period WHERE user_id IN ('ana', 'ben') ORDER BY user_id, period;
SELECT public.consistent();

-- INSERT ... SELECT
INSERT INTO tally.sessions (user_id, kind, started_at)
SELECT u, k, '2026-05-01 00:00+00'::timestamptz + i * interval '1 hour'
FROM unnest(ARRAY['ana', 'ben']) u, unnest(ARRAY['practice', 'assessment']) k, generate_series(1, 5) i;
SELECT * FROM public.usage_by_period WHERE period = '2026-05-01' ORDER BY user_id, period;
SELECT public.consistent();

-- COPY
COPY tally.sessions (session_id, user_id, kind, status, started_at, completed_at) FROM STDIN WITH (FORMAT csv);
11111111-0000-4000-8000-000000000001,ana,practice,completed,2026-06-02 10:00+00,2026-06-02 10:20+00
11111111-0000-4000-8000-000000000002,ana,assessment,completed,2026-06-03 10:00+00,
11111111-0000-4000-8000-000000000003,ben,practice,started,2026-06-04 10:00+00,
11111111-0000-4000-8000-000000000004,ben,practice,abandoned,2026-06-05 10:00+00,
\.
SELECT session_id, status, completed_at IS NOT NULL AS has_completed_at FROM tally.sessions
WHERE session_id::text LIKE '11111111%' ORDER BY session_id;
SELECT * FROM public.usage_by_period WHERE period = '2026-06-01' ORDER BY user_id, period;
SELECT public.consistent();

-- INSERT ... ON CONFLICT DO NOTHING: the existing row is not counted again
INSERT INTO tally.sessions (session_id, user_id, kind, started_at)
VALUES ('11111111-0000-4000-8000-000000000001', 'ana', 'practice', '2026-06-02 10:00+00'),
       ('11111111-0000-4000-8000-000000000005', 'ana', 'practice', '2026-06-06 10:00+00')
ON CONFLICT (user_id, session_id) DO NOTHING;
SELECT * FROM public.usage_by_period WHERE period = '2026-06-01' ORDER BY user_id, period;
SELECT public.consistent();

-- INSERT ... ON CONFLICT DO UPDATE: completing a started session through an upsert counts it once
INSERT INTO tally.sessions (session_id, user_id, kind, status, started_at)
VALUES ('11111111-0000-4000-8000-000000000003', 'ben', 'practice', 'completed', '2026-06-04 10:00+00')
ON CONFLICT (user_id, session_id) DO UPDATE SET status = excluded.status;
SELECT * FROM public.usage_by_period WHERE period = '2026-06-01' ORDER BY user_id, period;
SELECT public.consistent();

-- UPDATE: started -> completed counts, started -> abandoned does not, duration fixes change nothing
INSERT INTO tally.sessions (session_id, user_id, kind, status, started_at) VALUES
    ('22222222-0000-4000-8000-000000000001', 'ben', 'assessment', 'started', '2026-07-01 08:00+00'),
    ('22222222-0000-4000-8000-000000000002', 'ben', 'assessment', 'started', '2026-07-01 09:00+00');
SELECT * FROM public.usage_by_period WHERE period = '2026-07-01' ORDER BY user_id, period;
UPDATE tally.sessions SET status = 'completed' WHERE session_id = '22222222-0000-4000-8000-000000000001';
UPDATE tally.sessions SET status = 'abandoned' WHERE session_id = '22222222-0000-4000-8000-000000000002';
UPDATE tally.sessions SET duration_seconds = 600 WHERE user_id = 'ben';
SELECT status, completed_at IS NOT NULL AS has_completed_at FROM tally.sessions
WHERE session_id::text LIKE '22222222%' ORDER BY session_id;
SELECT * FROM public.usage_by_period WHERE period = '2026-07-01' ORDER BY user_id, period;
SELECT public.consistent();

-- DELETE gives usage back
DELETE FROM tally.sessions WHERE user_id = 'ana' AND started_at >= '2026-05-01' AND started_at < '2026-06-01' AND kind = 'assessment';
SELECT * FROM public.usage_by_period WHERE user_id = 'ana' AND period = '2026-05-01' ORDER BY user_id, period;
SELECT public.consistent();

-- savepoint rollback undoes the counters with the rows
BEGIN;
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('ana', 'practice', '2026-08-01 10:00+00');
SAVEPOINT before_more;
INSERT INTO tally.sessions (user_id, kind, started_at) SELECT 'ana', 'practice', '2026-08-02 10:00+00' FROM generate_series(1, 4);
DELETE FROM tally.sessions WHERE user_id = 'ana' AND started_at = '2026-08-01 10:00+00';
ROLLBACK TO SAVEPOINT before_more;
COMMIT;
SELECT * FROM public.usage_by_period WHERE period = '2026-08-01' ORDER BY user_id, period;
SELECT public.consistent();

-- learning plans: completion and deletion of their sessions move completed_sessions
INSERT INTO tally.learning_plans (learning_plan_id, user_id, title, total_sessions)
VALUES ('33333333-0000-4000-8000-000000000001', 'ben', 'Travel', 5);
INSERT INTO tally.sessions (session_id, user_id, kind, learning_plan_id, status, started_at) VALUES
    ('33333333-0000-4000-8000-00000000000a', 'ben', 'learning_plan', '33333333-0000-4000-8000-000000000001', 'completed', '2026-09-01 10:00+00'),
    ('33333333-0000-4000-8000-00000000000b', 'ben', 'learning_plan', '33333333-0000-4000-8000-000000000001', 'started', '2026-09-02 10:00+00');
UPDATE tally.sessions SET status = 'completed' WHERE session_id = '33333333-0000-4000-8000-00000000000b';
SELECT title, completed_sessions FROM tally.learning_plans WHERE learning_plan_id = '33333333-0000-4000-8000-000000000001';
DELETE FROM tally.sessions WHERE session_id = '33333333-0000-4000-8000-00000000000a';
SELECT title, completed_sessions FROM tally.learning_plans WHERE learning_plan_id = '33333333-0000-4000-8000-000000000001';
SELECT public.consistent();

-- a kind mapped to none is stored but counts nowhere (except its learning plan)
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('ana', 'warmup', '2026-03-12 09:00+00');
SELECT * FROM public.usage_by_period WHERE user_id = 'ana' AND period = '2026-03-01' ORDER BY user_id, period;
SELECT public.consistent();

-- deleting a subscription deletes the user's sessions, learning plans and usage
INSERT INTO tally.subscriptions (user_id, plan_id, period_anchor) VALUES ('dora', 'unlimited', '2026-01-01 00:00+00');
INSERT INTO tally.learning_plans (learning_plan_id, user_id) VALUES ('44444444-0000-4000-8000-000000000001', 'dora');
INSERT INTO tally.sessions (user_id, kind, learning_plan_id, started_at)
SELECT 'dora', 'learning_plan', '44444444-0000-4000-8000-000000000001', '2026-03-01 10:00+00' FROM generate_series(1, 3);
DELETE FROM tally.subscriptions WHERE user_id = 'dora';
SELECT (SELECT count(*) FROM tally.sessions WHERE user_id = 'dora') AS sessions,
       (SELECT count(*) FROM tally.learning_plans WHERE user_id = 'dora') AS learning_plans,
       (SELECT count(*) FROM tally.usage WHERE user_id = 'dora') AS usage_rows;
SELECT public.consistent();

-- a learning plan without completed sessions can be deleted; its started sessions go with it
INSERT INTO tally.learning_plans (learning_plan_id, user_id) VALUES ('55555555-0000-4000-8000-000000000001', 'ana');
INSERT INTO tally.sessions (user_id, kind, learning_plan_id, status, started_at)
VALUES ('ana', 'learning_plan', '55555555-0000-4000-8000-000000000001', 'started', '2026-03-20 10:00+00');
DELETE FROM tally.learning_plans WHERE learning_plan_id = '55555555-0000-4000-8000-000000000001';
SELECT count(*) AS sessions_left FROM tally.sessions WHERE learning_plan_id = '55555555-0000-4000-8000-000000000001';
SELECT public.consistent();
