-- verify() proves consistency; repair() fixes drift left by bypassed triggers.
SET timezone = 'UTC';
-- Users of its own: a completed session, a started one, and a learning plan.
INSERT INTO tally.subscriptions (user_id, plan_id, period_anchor) VALUES
    ('rhea', 'unlimited', '2026-01-01 00:00+00'),
    ('rolf', 'unlimited', '2026-01-01 00:00+00');
INSERT INTO tally.learning_plans (learning_plan_id, user_id, title) VALUES ('88888888-0000-4000-8000-0000000000f1', 'rolf', 'Travel');
INSERT INTO tally.sessions (user_id, kind, status, learning_plan_id, started_at) VALUES
    ('rhea', 'practice', 'completed', NULL, '2026-03-10 09:00+00'),
    ('rolf', 'practice', 'started', NULL, '2026-03-11 09:00+00'),
    ('rolf', 'learning_plan', 'completed', '88888888-0000-4000-8000-0000000000f1', '2026-09-01 10:00+00');
SELECT * FROM tally.verify();

-- Drift can only come from bypassing the triggers:
SET session_replication_role = replica;
INSERT INTO tally.sessions (user_id, kind, started_at, completed_at)
VALUES ('rolf', 'practice', '2026-03-20 10:00+00', '2026-03-20 10:30+00'),
       ('rolf', 'assessment', '2026-03-21 10:00+00', '2026-03-21 10:30+00');
DELETE FROM tally.sessions WHERE user_id = 'rhea' AND kind = 'practice' AND started_at = '2026-03-10 09:00+00';
RESET session_replication_role;
ALTER TABLE tally.sessions DISABLE TRIGGER sessions_count_update;
UPDATE tally.sessions SET status = 'completed' WHERE user_id = 'rolf' AND status = 'started' AND learning_plan_id IS NULL;
ALTER TABLE tally.sessions ENABLE TRIGGER sessions_count_update;
ALTER TABLE tally.sessions DISABLE TRIGGER sessions_count_insert;
INSERT INTO tally.sessions (user_id, kind, learning_plan_id, started_at)
VALUES ('rolf', 'learning_plan', '88888888-0000-4000-8000-0000000000f1', '2026-09-03 10:00+00');
ALTER TABLE tally.sessions ENABLE TRIGGER sessions_count_insert;

SELECT object, id, to_char(period_start, 'YYYY-MM-DD') AS period, counter, stored, actual FROM tally.verify();
SELECT object, id, stored_practice, actual_practice, stored_assessments, actual_assessments FROM public.recount_mismatches ORDER BY 1, 2, 3;

-- the one-off repair script of the old world is one call
SELECT tally.repair() AS fixed;
SELECT * FROM tally.verify();
SELECT public.consistent();
SELECT object, object_id, to_char(period_start, 'YYYY-MM-DD') AS period, counter, old_value, new_value,
       adjusted_by = session_user AS by_caller, adjusted_at <= now() AS recorded_when
FROM tally.adjustments ORDER BY adjustment_id;
SELECT tally.repair() AS fixed_again;

-- repair is for administrators: no EXECUTE for PUBLIC
SELECT has_function_privilege('public', 'tally.repair()', 'EXECUTE') AS public_can_repair,
       has_function_privilege('public', 'tally.verify()', 'EXECUTE') AS public_can_verify;
