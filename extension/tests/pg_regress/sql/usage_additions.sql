-- What a DBA adds to tally.usage is applied to tally's counter writes too. The
-- single-row path updates an existing usage row in the heap, without the executor;
-- when the table has anything the executor would add to that update (a CHECK
-- constraint, a stored generated column, a rule, row security, a publication of
-- updates, a trigger of its own, another index), the write takes the SQL path
-- instead, where PostgreSQL applies it.
-- (Row security is not shown: counting runs as the extension owner, whom it does
-- not bind. A rule is not shown either: PostgreSQL refuses INSERT … ON CONFLICT on
-- a table with rules, so every counter write would fail.)
SET client_min_messages = warning;
SET timezone = 'UTC';
INSERT INTO tally.subscriptions (user_id, plan_id, period_anchor) VALUES
    ('kit', 'fluency_builder', '2026-01-01 00:00+00'),
    ('lou', 'fluency_builder', '2026-01-01 00:00+00'),
    ('max', 'fluency_builder', '2026-01-01 00:00+00'),
    ('ned', 'fluency_builder', '2026-01-01 00:00+00'),
    ('oda', 'fluency_builder', '2026-01-01 00:00+00');

-- A CHECK constraint: the third session would take the row past it, refused with
-- the constraint's own error, nothing written.
ALTER TABLE tally.usage ADD CONSTRAINT usage_at_most_two CHECK (user_id <> 'kit' OR practice_sessions_used <= 2);
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('kit', 'practice', '2026-03-10 10:00+00');
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('kit', 'practice', '2026-03-10 11:00+00');
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('kit', 'practice', '2026-03-10 12:00+00');
SELECT practice_sessions_used FROM tally.usage WHERE user_id = 'kit';
SELECT count(*) AS sessions FROM tally.sessions WHERE user_id = 'kit';
ALTER TABLE tally.usage DROP CONSTRAINT usage_at_most_two;

-- A stored generated column is computed for every counter write.
ALTER TABLE tally.usage ADD COLUMN sessions_total integer
    GENERATED ALWAYS AS (practice_sessions_used + assessments_used) STORED;
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('lou', 'practice', '2026-03-10 10:00+00');
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('lou', 'assessment', '2026-03-10 11:00+00');
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('lou', 'practice', '2026-03-10 12:00+00');
SELECT practice_sessions_used, assessments_used, sessions_total FROM tally.usage WHERE user_id = 'lou';
ALTER TABLE tally.usage DROP COLUMN sessions_total;

-- A publication of updates with no replica identity: PostgreSQL refuses the update
-- of max's existing usage row.
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('max', 'practice', '2026-03-10 10:00+00');
SET client_min_messages = error;  -- not the wal_level warning, which depends on the server
CREATE PUBLICATION regress_usage_pub FOR TABLE tally.usage WITH (publish = 'update');
SET client_min_messages = warning;
ALTER TABLE tally.usage REPLICA IDENTITY NOTHING;
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('max', 'practice', '2026-03-10 11:00+00');
SELECT practice_sessions_used FROM tally.usage WHERE user_id = 'max';
ALTER TABLE tally.usage REPLICA IDENTITY DEFAULT;
DROP PUBLICATION regress_usage_pub;

-- A trigger of the DBA's own fires for every counter write, the update of an
-- existing row included. (It runs inside tally's counting, whose search path is
-- pg_catalog alone: it names its tables with their schema.)
CREATE TABLE usage_audit (user_id text, practice_sessions_used integer);
CREATE FUNCTION audit_usage() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.usage_audit VALUES (NEW.user_id, NEW.practice_sessions_used);
    RETURN NULL;
END $$;
CREATE TRIGGER usage_audited AFTER INSERT OR UPDATE ON tally.usage FOR EACH ROW EXECUTE FUNCTION audit_usage();
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('ned', 'practice', '2026-03-10 10:00+00');
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('ned', 'practice', '2026-03-10 11:00+00');
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('ned', 'practice', '2026-03-10 12:00+00');
SELECT user_id, practice_sessions_used FROM usage_audit ORDER BY practice_sessions_used;
DROP TRIGGER usage_audited ON tally.usage;
DROP TABLE usage_audit;
DROP FUNCTION audit_usage();

-- Another index holds every counter row's new version: an update that changes an
-- indexed column cannot be HOT, and the index must get the new entry.
CREATE INDEX usage_practice_used_idx ON tally.usage (practice_sessions_used, user_id);
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('oda', 'practice', '2026-03-10 10:00+00');
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('oda', 'practice', '2026-03-10 11:00+00');
SELECT practice_sessions_used FROM tally.usage WHERE user_id = 'oda';
CREATE EXTENSION amcheck;
SELECT bt_index_check('tally.usage_practice_used_idx', heapallindexed => true);
DROP EXTENSION amcheck;
DROP INDEX tally.usage_practice_used_idx;

-- With the table as tally made it again, the single-row path counts as before.
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('max', 'practice', '2026-03-10 12:00+00');
SELECT practice_sessions_used FROM tally.usage WHERE user_id = 'max';
DELETE FROM tally.subscriptions WHERE user_id IN ('kit', 'lou', 'max', 'ned', 'oda');
SELECT count(*) AS drift FROM tally.verify();
