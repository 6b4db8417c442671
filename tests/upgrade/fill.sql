-- What a database at an earlier release holds: the motivating case, several users on
-- several plans, learning plans, started, completed and abandoned sessions in several
-- periods, a writer role with the README's grants, and drift made on purpose.
-- Every plan is monthly and anchored on the 1st at 00:00 UTC, so that an independent
-- recount can bucket sessions by calendar month.
--
-- It is written past tally's triggers, as a restore writes, and then sets the
-- counters those triggers keep from a recount by calendar month: the library under
-- test serves only its own release and the one before (extension/src/entry/served.rs), and
-- this fill must work at every release. Plain SQL of every release's tables, nothing
-- else.
\set ON_ERROR_STOP on
SET client_min_messages = warning;
SET timezone = 'UTC';
SET session_replication_role = replica;

INSERT INTO tally.plans (plan_id, display_name, practice_sessions_limit, assessments_limit) VALUES
    ('up_fluency', 'Fluency Builder', 30, 2),
    ('up_tiny', 'Tiny', 3, 1),
    ('up_unlimited', 'Unlimited', NULL, NULL);
INSERT INTO tally.subscriptions (user_id, plan_id, period_anchor) VALUES
    ('up_kamile', 'up_fluency', '2026-01-01 00:00+00'),
    ('up_jonas', 'up_tiny', '2026-01-01 00:00+00'),
    ('up_ruta', 'up_unlimited', '2026-01-01 00:00+00'),
    ('up_drift', 'up_fluency', '2026-01-01 00:00+00');
INSERT INTO tally.session_kinds (kind, counter) VALUES ('up_warmup', 'none');
INSERT INTO tally.learning_plans (learning_plan_id, user_id, title, total_sessions) VALUES
    ('0b000000-0000-4000-8000-000000000001', 'up_kamile', 'Job interview English', 12),
    ('0b000000-0000-4000-8000-000000000002', 'up_drift', 'Travel', 6);

-- Finished sessions carry the completed_at tally's trigger would have filled in.
-- The motivating case: 3 learning-plan sessions and 1 assessment in one month.
INSERT INTO tally.sessions (user_id, kind, learning_plan_id, started_at, completed_at)
SELECT 'up_kamile', 'learning_plan', '0b000000-0000-4000-8000-000000000001', t, t + interval '30 minutes'
  FROM unnest(ARRAY['2026-03-02 09:00+00', '2026-03-05 09:00+00', '2026-03-09 09:00+00']::timestamptz[]) t;
INSERT INTO tally.sessions (user_id, kind, started_at, completed_at)
VALUES ('up_kamile', 'assessment', '2026-03-10 09:00+00', '2026-03-10 09:30+00');
-- Other months, statuses and kinds.
INSERT INTO tally.sessions (user_id, kind, status, started_at, completed_at)
SELECT 'up_jonas', 'practice', s, '2026-02-01 10:00+00'::timestamptz + g * interval '1 day',
       CASE WHEN s = 'completed' THEN '2026-02-01 10:30+00'::timestamptz + g * interval '1 day' END
  FROM unnest(ARRAY['completed', 'completed', 'abandoned', 'started']) WITH ORDINALITY AS t(s, g);
INSERT INTO tally.sessions (user_id, kind, status, started_at, completed_at) VALUES
    ('up_jonas', 'assessment', 'started', '2026-04-02 10:00+00', NULL),
    ('up_ruta', 'practice', 'completed', '2026-01-15 10:00+00', '2026-01-15 10:30+00'),
    ('up_ruta', 'practice', 'completed', '2026-04-15 10:00+00', '2026-04-15 10:30+00'),
    ('up_ruta', 'up_warmup', 'completed', '2026-04-16 10:00+00', '2026-04-16 10:30+00'),
    ('up_ruta', 'assessment', 'abandoned', '2026-05-01 10:00+00', NULL);
INSERT INTO tally.sessions (user_id, kind, started_at, completed_at)
SELECT 'up_drift', 'practice', t, t + interval '30 minutes'
  FROM (SELECT '2026-05-01 10:00+00'::timestamptz + g * interval '1 hour' FROM generate_series(1, 5) g) AS s(t);

-- The counters, as tally keeps them.
INSERT INTO tally.usage (user_id, period_start, period_end, practice_sessions_used, assessments_used)
SELECT x.user_id, m, m + interval '1 month',
       count(*) FILTER (WHERE k.counter = 'practice_sessions'), count(*) FILTER (WHERE k.counter = 'assessments')
  FROM tally.sessions x JOIN tally.session_kinds k USING (kind),
       LATERAL (SELECT date_trunc('month', x.started_at)) AS b(m)
 WHERE x.status = 'completed' AND k.counter <> 'none'
 GROUP BY x.user_id, m;
UPDATE tally.learning_plans lp
   SET completed_sessions = (SELECT count(*) FROM tally.sessions x
                              WHERE x.learning_plan_id = lp.learning_plan_id AND x.status = 'completed');

CREATE ROLE up_writer;
GRANT USAGE ON SCHEMA tally TO up_writer;
GRANT SELECT ON ALL TABLES IN SCHEMA tally TO up_writer;
GRANT INSERT, UPDATE, DELETE ON tally.sessions TO up_writer;

-- Drift, the only way it can happen: sessions written past the triggers and not
-- counted.
INSERT INTO tally.sessions (user_id, kind, learning_plan_id, started_at, completed_at)
VALUES ('up_drift', 'learning_plan', '0b000000-0000-4000-8000-000000000002', '2026-05-20 10:00+00', '2026-05-20 10:30+00');
INSERT INTO tally.sessions (user_id, kind, started_at, completed_at) VALUES ('up_drift', 'assessment', '2026-06-03 10:00+00', '2026-06-03 10:30+00');
RESET session_replication_role;
