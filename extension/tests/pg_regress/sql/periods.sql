-- Billing periods: computed from the anchor each time, in UTC, rolling over by themselves.
SET timezone = 'UTC';

-- a Jan 31 anchor gives Feb 28 (Feb 29 in a leap year), then Mar 31, then Apr 30
SELECT to_char(tally.period_start_for('2026-01-31 00:00+00', '1 month', t), 'YYYY-MM-DD') AS period_start,
       to_char(tally.period_end_for('2026-01-31 00:00+00', '1 month', t), 'YYYY-MM-DD') AS period_end
FROM unnest(ARRAY['2026-02-01', '2026-02-28', '2026-03-30', '2026-04-15', '2026-05-01', '2028-02-29', '2025-12-31']::timestamptz[]) t;

-- boundaries are half-open, and the client's TimeZone does not move them
SET timezone = 'America/Los_Angeles';
SELECT tally.period_start_for('2026-01-01 00:00+00', '1 month', '2026-03-01 00:00+00') = '2026-03-01 00:00+00' AS at_boundary,
       tally.period_start_for('2026-01-01 00:00+00', '1 month', '2026-02-28 23:59:59.999999+00') = '2026-02-01 00:00+00' AS just_before;
SET timezone = 'UTC';

-- weekly and mixed periods
SELECT to_char(tally.period_start_for('2026-01-05 00:00+00', '7 days', '2026-01-20 12:00+00'), 'YYYY-MM-DD') AS weekly,
       to_char(tally.period_start_for('2026-01-31 00:00+00', '1 month 1 day', '2026-04-05'), 'YYYY-MM-DD') AS mixed;
SELECT tally.period_is_valid('1 month'), tally.period_is_valid('1 hour'), tally.period_is_valid('0'), tally.period_is_valid('-1 day');

-- sessions count in the period of their started_at
INSERT INTO tally.plans (plan_id, display_name, period) VALUES ('monthly_end', 'Month-end', '1 month');
INSERT INTO tally.subscriptions (user_id, plan_id, period_anchor) VALUES ('eve', 'monthly_end', '2026-01-31 00:00+00');
INSERT INTO tally.sessions (user_id, kind, started_at) VALUES
    ('eve', 'practice', '2026-02-27 23:00+00'),
    ('eve', 'practice', '2026-02-28 00:00+00'),
    ('eve', 'practice', '2026-03-30 23:59+00'),
    ('eve', 'practice', '2026-03-31 00:00+00');
SELECT * FROM public.usage_by_period WHERE user_id = 'eve' ORDER BY user_id, period;
SELECT count(*) AS drift FROM tally.verify();

-- the current period rolls over with now(); nothing needs a cron job. It is one of
-- the anchor's periods [anchor + k months, anchor + (k+1) months), whatever the date
-- (a period that starts on a clamped Feb 28 ends on Mar 31)
SELECT period_start <= now() AND now() < period_end AS contains_now,
       EXISTS (SELECT FROM generate_series(0, 1200) k
                WHERE period_start = timestamptz '2026-01-31 00:00+00' + k * interval '1 month'
                  AND period_end = timestamptz '2026-01-31 00:00+00' + (k + 1) * interval '1 month') AS one_month
FROM tally.current_usage WHERE user_id = 'eve';

-- changing the anchor re-buckets the user's usage from the sessions
UPDATE tally.subscriptions SET period_anchor = '2026-01-15 00:00+00' WHERE user_id = 'eve';
SELECT * FROM public.usage_by_period WHERE user_id = 'eve' ORDER BY user_id, period;
SELECT count(*) AS drift FROM tally.verify();

-- so does a new period on the plan, for every subscriber
UPDATE tally.plans SET period = '14 days' WHERE plan_id = 'monthly_end';
SELECT * FROM public.usage_by_period WHERE user_id = 'eve' ORDER BY user_id, period;
SELECT count(*) AS drift FROM tally.verify();

-- moving to a plan with the same period keeps usage; to another period re-buckets
UPDATE tally.subscriptions SET plan_id = 'unlimited', period_anchor = '2026-01-01 00:00+00' WHERE user_id = 'eve';
SELECT * FROM public.usage_by_period WHERE user_id = 'eve' ORDER BY user_id, period;
SELECT public.consistent();
DELETE FROM tally.subscriptions WHERE user_id = 'eve';
DELETE FROM tally.plans WHERE plan_id = 'monthly_end';
