-- The bug tally exists to prevent: learning-plan sessions saved through a path
-- that forgot the increment. With tally, plain SQL is enough.
SET timezone = 'UTC';
INSERT INTO tally.subscriptions (user_id, plan_id, period_anchor) VALUES ('kamile', 'fluency_builder', '2026-01-01 00:00+00');
INSERT INTO tally.learning_plans (learning_plan_id, user_id, title, total_sessions)
VALUES ('6f1c2a9e-0000-4000-8000-000000000001', 'kamile', 'Job interview English', 12);

INSERT INTO tally.sessions (user_id, kind, learning_plan_id, duration_seconds)
SELECT 'kamile', 'learning_plan', '6f1c2a9e-0000-4000-8000-000000000001', 900
FROM generate_series(1, 3);
INSERT INTO tally.sessions (user_id, kind, duration_seconds) VALUES ('kamile', 'assessment', 1800);

SELECT user_id, plan_id, practice_sessions_used, practice_sessions_limit, practice_sessions_remaining,
       assessments_used, assessments_limit, assessments_remaining
FROM tally.current_usage WHERE user_id = 'kamile';
SELECT title, completed_sessions, total_sessions FROM tally.learning_plans WHERE user_id = 'kamile';
SELECT public.consistent();
