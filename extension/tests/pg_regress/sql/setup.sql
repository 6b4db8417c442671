-- Fixtures shared by the regression files. Every plan here is monthly with an
-- anchor at 00:00 UTC on the 1st, so an independent recount can bucket sessions
-- with date_trunc('month'), without tally's own period code.
SET client_min_messages = warning;
SET timezone = 'UTC';
SELECT extname, extversion FROM pg_extension WHERE extname = 'tally';

INSERT INTO tally.plans (plan_id, display_name, practice_sessions_limit, assessments_limit) VALUES
    ('fluency_builder', 'Fluency Builder', 30, 2),
    ('unlimited', 'Unlimited', NULL, NULL),
    ('tiny', 'Tiny', 3, 1);

-- A kind that counts nothing.
INSERT INTO tally.session_kinds VALUES ('warmup', 'none');

INSERT INTO tally.subscriptions (user_id, plan_id, period_anchor) VALUES
    ('ana', 'unlimited', '2026-01-01 00:00+00'),
    ('ben', 'unlimited', '2026-01-01 00:00+00'),
    ('cruz', 'tiny', '2026-01-01 00:00+00');

-- The oracle: counters that disagree with a plain recount of tally.sessions.
-- (Joins by user_id throughout, so that it also runs on Citus.)
CREATE VIEW public.recount_mismatches AS
SELECT 'usage' AS object, coalesce(u.user_id, a.user_id) AS id, coalesce(u.period_start, a.period_start) AS period_start,
       coalesce(u.practice_sessions_used, 0) AS stored_practice, coalesce(a.practice, 0) AS actual_practice,
       coalesce(u.assessments_used, 0) AS stored_assessments, coalesce(a.assessments, 0) AS actual_assessments
FROM tally.usage u
FULL JOIN (
    SELECT x.user_id, date_trunc('month', x.started_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS period_start,
           count(*) FILTER (WHERE k.counter = 'practice_sessions') AS practice,
           count(*) FILTER (WHERE k.counter = 'assessments') AS assessments
    FROM tally.sessions x JOIN tally.session_kinds k USING (kind)
    WHERE x.status = 'completed'
    GROUP BY 1, 2
) a ON a.user_id = u.user_id AND a.period_start = u.period_start
WHERE coalesce(u.practice_sessions_used, 0) <> coalesce(a.practice, 0)
   OR coalesce(u.assessments_used, 0) <> coalesce(a.assessments, 0)
UNION ALL
SELECT 'learning_plan', lp.learning_plan_id::text, NULL, lp.completed_sessions, coalesce(d.done, 0), NULL, NULL
FROM tally.learning_plans lp
LEFT JOIN (SELECT x.user_id, x.learning_plan_id, count(*) AS done
             FROM tally.sessions x
            WHERE x.status = 'completed' AND x.learning_plan_id IS NOT NULL
            GROUP BY 1, 2) d ON d.user_id = lp.user_id AND d.learning_plan_id = lp.learning_plan_id
WHERE lp.completed_sessions <> coalesce(d.done, 0);

-- What an analyst looks at, without the now()-dependent columns.
CREATE VIEW public.usage_by_period AS
SELECT user_id, to_char(period_start AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS period,
       to_char(period_end AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS period_end,
       practice_sessions_used AS practice, assessments_used AS assessments
FROM tally.usage ORDER BY user_id, period_start;

-- Both oracles must be empty after every statement that follows.
CREATE FUNCTION public.consistent() RETURNS text LANGUAGE sql AS $$
    SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM public.recount_mismatches)
                 AND NOT EXISTS (SELECT 1 FROM tally.verify())
           THEN 'consistent' ELSE 'DRIFT' END
$$;
