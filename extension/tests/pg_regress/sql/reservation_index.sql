-- The reservation count reads tally.sessions' partial index of started sessions,
-- sessions_reservations_idx, by key. An index of that name that PostgreSQL itself
-- would not use holds no entries (a failed CREATE INDEX CONCURRENTLY leaves it
-- INVALID and not ready), so counting must not trust it either: a held slot would
-- go unseen and the limit be passed. (One node: the file rebuilds the index.)
SET client_min_messages = warning;
SET timezone = 'UTC';
SET tally.reservation_timeout = '100 years';
INSERT INTO tally.subscriptions (user_id, plan_id, period_anchor) VALUES
    ('ivy', 'tiny', '2026-01-01 00:00+00'),
    ('zed', 'fluency_builder', '2026-01-01 00:00+00');
-- A started session whose duration makes the index's expression divide by zero
-- stops the concurrent build, which leaves the index INVALID.
INSERT INTO tally.sessions (user_id, kind, status, started_at, duration_seconds)
VALUES ('zed', 'practice', 'started', '2026-03-10 09:00+00', 0);
DROP INDEX tally.sessions_reservations_idx;
CREATE INDEX CONCURRENTLY sessions_reservations_idx ON tally.sessions (user_id, started_at, (1 / duration_seconds))
    WHERE status = 'started';
SELECT indisvalid, indisready FROM pg_index WHERE indexrelid = 'tally.sessions_reservations_idx'::regclass;

-- ivy's plan allows one assessment a month; a started one holds it, so a completed
-- one is refused.
INSERT INTO tally.sessions (user_id, kind, status, started_at) VALUES ('ivy', 'assessment', 'started', '2026-03-10 10:00+00');
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('ivy', 'assessment', '2026-03-10 11:00+00');
SELECT assessments_used FROM tally.usage WHERE user_id = 'ivy';
-- Counting the same in one statement of several rows.
INSERT INTO tally.sessions (user_id, kind, started_at)
VALUES ('ivy', 'assessment', '2026-03-10 12:00+00'), ('ivy', 'practice', '2026-03-10 12:00+00');
SELECT assessments_used, practice_sessions_used FROM tally.usage WHERE user_id = 'ivy';

-- The index as tally creates it, back.
DROP INDEX tally.sessions_reservations_idx;
CREATE INDEX sessions_reservations_idx ON tally.sessions (user_id, started_at) WHERE status = 'started';
DELETE FROM tally.subscriptions WHERE user_id IN ('ivy', 'zed');
SELECT count(*) AS drift FROM tally.verify();
