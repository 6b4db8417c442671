-- Baselines that tally is measured against, each on a copy of tally.sessions with the
-- same columns, constraints, indexes and foreign keys, so the only difference is how
-- the counters are kept.
SET client_min_messages = warning;

DROP SCHEMA IF EXISTS bench CASCADE;
CREATE SCHEMA bench;

CREATE FUNCTION bench.copy_sessions_table(target text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE TABLE bench.%I (LIKE tally.sessions INCLUDING ALL)', target);
    EXECUTE format('ALTER TABLE bench.%I ADD FOREIGN KEY (user_id) REFERENCES tally.subscriptions ON DELETE CASCADE', target);
    EXECUTE format('ALTER TABLE bench.%I ADD FOREIGN KEY (kind) REFERENCES tally.session_kinds', target);
    EXECUTE format('ALTER TABLE bench.%I ADD FOREIGN KEY (learning_plan_id, user_id) REFERENCES tally.learning_plans (learning_plan_id, user_id)', target);
    EXECUTE format('CREATE TABLE bench.%I (LIKE tally.usage INCLUDING ALL) WITH (fillfactor = 70)', target || '_usage');
END $$;

-- The floor: no counting at all.
SELECT bench.copy_sessions_table('plain');

-- What a user would write instead: a PL/pgSQL row trigger that upserts the counter.
SELECT bench.copy_sessions_table('row_trigger');
CREATE FUNCTION bench.count_row() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    s record;
    k text;
    p_start timestamptz;
BEGIN
    IF NEW.status <> 'completed' THEN RETURN NULL; END IF;
    SELECT counter INTO k FROM tally.session_kinds WHERE kind = NEW.kind;
    IF k = 'none' THEN RETURN NULL; END IF;
    SELECT sub.period_anchor, pl.period INTO s FROM tally.subscriptions sub JOIN tally.plans pl USING (plan_id) WHERE sub.user_id = NEW.user_id;
    p_start := tally.period_start_for(s.period_anchor, s.period, NEW.started_at);
    INSERT INTO bench.row_trigger_usage AS u (user_id, period_start, period_end, practice_sessions_used, assessments_used)
    VALUES (NEW.user_id, p_start, tally.period_end_for(s.period_anchor, s.period, NEW.started_at),
            (k = 'practice_sessions')::int, (k = 'assessments')::int)
    ON CONFLICT (user_id, period_start) DO UPDATE
       SET practice_sessions_used = u.practice_sessions_used + excluded.practice_sessions_used,
           assessments_used = u.assessments_used + excluded.assessments_used;
    RETURN NULL;
END $$;
CREATE TRIGGER count_row AFTER INSERT ON bench.row_trigger FOR EACH ROW EXECUTE FUNCTION bench.count_row();

-- A careful user's PL/pgSQL statement trigger with a transition table.
SELECT bench.copy_sessions_table('stmt_trigger');
CREATE FUNCTION bench.count_statement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench.stmt_trigger_usage AS u (user_id, period_start, period_end, practice_sessions_used, assessments_used)
    SELECT n.user_id, tally.period_start_for(s.period_anchor, p.period, n.started_at),
           tally.period_end_for(s.period_anchor, p.period, n.started_at),
           count(*) FILTER (WHERE k.counter = 'practice_sessions'), count(*) FILTER (WHERE k.counter = 'assessments')
      FROM new_rows n
      JOIN tally.session_kinds k ON k.kind = n.kind
      JOIN tally.subscriptions s ON s.user_id = n.user_id
      JOIN tally.plans p ON p.plan_id = s.plan_id
     WHERE n.status = 'completed' AND k.counter <> 'none'
     GROUP BY 1, 2, 3
     ORDER BY 1, 2
    ON CONFLICT (user_id, period_start) DO UPDATE
       SET practice_sessions_used = u.practice_sessions_used + excluded.practice_sessions_used,
           assessments_used = u.assessments_used + excluded.assessments_used;
    RETURN NULL;
END $$;
CREATE TRIGGER count_statement AFTER INSERT ON bench.stmt_trigger REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION bench.count_statement();

-- The old application's way: INSERT, then a separate counter UPDATE in the same transaction.
SELECT bench.copy_sessions_table('app_side');

-- Counters that disagree with a recount, for any of the copies (tally itself is checked by tally.verify()).
CREATE FUNCTION bench.mismatches(target text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    EXECUTE format($q$
        WITH actual AS (
            SELECT x.user_id, tally.period_start_for(s.period_anchor, p.period, x.started_at) AS period_start,
                   count(*) FILTER (WHERE k.counter = 'practice_sessions') AS practice,
                   count(*) FILTER (WHERE k.counter = 'assessments') AS assessments
              FROM bench.%1$I x
              JOIN tally.session_kinds k ON k.kind = x.kind
              JOIN tally.subscriptions s ON s.user_id = x.user_id
              JOIN tally.plans p ON p.plan_id = s.plan_id
             WHERE x.status = 'completed' AND k.counter <> 'none'
             GROUP BY 1, 2)
        SELECT count(*) FROM bench.%2$I u FULL JOIN actual a USING (user_id, period_start)
         WHERE coalesce(u.practice_sessions_used, 0) <> coalesce(a.practice, 0)
            OR coalesce(u.assessments_used, 0) <> coalesce(a.assessments, 0)$q$, target, target || '_usage') INTO n;
    RETURN n;
END $$;
