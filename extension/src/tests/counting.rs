//! Counting on both paths, periods and limits.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    use crate::tests::*;

    #[pg_test]
    fn motivating_case_counts_learning_plan_sessions() {
        fixtures();
        run("INSERT INTO tally.learning_plans (learning_plan_id, user_id) VALUES ('6f1c2a9e-0000-4000-8000-000000000001', 'kamile')");
        run("INSERT INTO tally.sessions (user_id, kind, learning_plan_id, started_at)
             SELECT 'kamile', 'learning_plan', '6f1c2a9e-0000-4000-8000-000000000001', '2026-03-05 10:00+00' FROM generate_series(1, 3)");
        run("INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('kamile', 'assessment', '2026-03-06 10:00+00')");
        // Jan 31 anchor: the March period starts on Feb 28.
        assert_eq!(usage("kamile", "2026-02-28 00:00+00"), (3, 1));
        let completed =
            Spi::get_one::<i32>("SELECT completed_sessions FROM tally.learning_plans").unwrap();
        assert_eq!(completed, Some(3));
    }

    #[pg_test]
    fn sql_period_functions_agree_with_calendar_arithmetic() {
        run("SET LOCAL timezone = 'Europe/Vilnius'");
        let starts = Spi::get_one::<String>(
            "SELECT string_agg(to_char(tally.period_start_for('2026-01-31 00:00+00', '1 month', t) AT TIME ZONE 'UTC', 'MM-DD'), ' ' ORDER BY t)
               FROM unnest(ARRAY['2026-02-01', '2026-03-01', '2026-04-01', '2026-05-01']::timestamptz[]) t",
        )
        .unwrap();
        assert_eq!(starts.as_deref(), Some("01-31 02-28 03-31 04-30"));
    }

    #[pg_test]
    fn statement_counts_many_users_and_periods_at_once() {
        fixtures();
        users_without_limits("user", 50, "7 days", "2026-01-05 00:00+00");
        run("INSERT INTO tally.sessions (user_id, kind, started_at)
             SELECT 'user' || (1 + i % 50), CASE WHEN i % 4 = 0 THEN 'assessment' ELSE 'practice' END,
                    '2026-01-05 00:00+00'::timestamptz + (i % 21) * interval '1 day'
               FROM generate_series(1, 2000) i");
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM tally.usage WHERE user_id LIKE 'user%'")
                .unwrap(),
            Some(150)
        );
        assert_eq!(
            Spi::get_one::<i64>(
                "SELECT sum(practice_sessions_used + assessments_used) FROM tally.usage"
            )
            .unwrap(),
            Some(2000)
        );
        assert_no_drift();
        run("DELETE FROM tally.sessions WHERE kind = 'assessment'");
        assert_eq!(
            Spi::get_one::<i64>("SELECT sum(assessments_used) FROM tally.usage").unwrap(),
            Some(0)
        );
        assert_no_drift();
    }

    /// `tally.fast_path = off` takes every read and write to SPI: nothing is served by
    /// key, and the usage row's bound, which only the write by key keeps, stays
    /// unknown. On again, the next single-row write keeps it. Only a superuser may
    /// change the setting.
    #[pg_test]
    fn fast_path_off_counts_through_spi_only() {
        fixtures();
        run("INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('kamile', 'practice', now() - interval '1 minute')");
        let practice_now = || {
            Spi::get_one::<i32>(
                "SELECT practice_sessions_used FROM tally.current_usage WHERE user_id = 'kamile'",
            )
            .unwrap()
        };
        let bound = || {
            Spi::get_one::<i32>("SELECT started_bound FROM tally.usage WHERE user_id = 'kamile'")
                .unwrap()
        };
        run("SET LOCAL tally.fast_path = off");
        assert!(crate::store::rows::Tables::here().is_none());
        assert!(crate::store::rows::Reservations::here().is_none());
        run("INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('kamile', 'practice', now() - interval '1 minute')");
        assert_eq!(bound(), None);
        assert_eq!(practice_now(), Some(2));
        run("SET LOCAL tally.fast_path = on");
        assert!(crate::store::rows::Reservations::here().is_some());
        run("INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('kamile', 'practice', now() - interval '1 minute')");
        assert_eq!(bound(), Some(0));
        assert_eq!(practice_now(), Some(3));
        assert_no_drift();
        run("CREATE ROLE tally_fast_path_tester");
        run("SET LOCAL ROLE tally_fast_path_tester");
        assert_eq!(
            error_code("SET tally.fast_path = off"),
            Some("42501".into())
        );
    }

    /// Without the reservation index the count falls back to SQL, and limits hold.
    #[pg_test]
    fn limits_hold_without_the_reservation_index() {
        fixtures();
        run("DROP INDEX tally.sessions_reservations_idx");
        assert!(crate::store::rows::Reservations::here().is_none());
        // The plan allows 2 assessments: two started ones hold both slots.
        for _ in 0..2 {
            run("INSERT INTO tally.sessions (user_id, kind, status) VALUES ('kamile', 'assessment', 'started')");
        }
        assert_eq!(
            error_code("INSERT INTO tally.sessions (user_id, kind, status) VALUES ('kamile', 'assessment', 'started')"),
            Some("TL001".into())
        );
    }

    /// The routed path (SPI statements only, as on a Citus shard whose co-located
    /// shards are elsewhere) counts what the local path counts.
    #[pg_test]
    fn routed_counting_matches_the_local_path() {
        fixtures();
        let mut seen = Vec::new();
        for (routed, n) in [(false, 1), (true, 2)] {
            let (kamile, jonas) = (format!("kamile{n}"), format!("jonas{n}"));
            let plan = format!("6f1c2a9e-0000-4000-8000-00000000000{n}");
            let session = format!("6f1c2a9e-0000-4000-8000-0000000000a{n}");
            for user in [&kamile, &jonas] {
                run(&format!("INSERT INTO tally.subscriptions (user_id, plan_id, period_anchor) VALUES ('{user}', 'fluency_builder', '2026-01-31 00:00+00')"));
            }
            run(&format!("INSERT INTO tally.learning_plans (learning_plan_id, user_id) VALUES ('{plan}', '{kamile}')"));
            crate::citus::routed_in_tests::ON.with(|on| on.set(routed));
            for sql in [
                // Many rows, two users, two periods, a learning plan.
                format!("INSERT INTO tally.sessions (user_id, kind, learning_plan_id, started_at)
                         SELECT '{kamile}', 'learning_plan', '{plan}'::uuid, timestamptz '2026-03-05 10:00+00' FROM generate_series(1, 3)
                         UNION ALL SELECT '{jonas}', 'practice', NULL, timestamptz '2026-04-05 10:00+00'"),
                // One row: a started assessment, then its completion.
                format!("INSERT INTO tally.sessions (session_id, user_id, kind, status, started_at)
                         VALUES ('{session}', '{kamile}', 'assessment', 'started', now() - interval '1 minute')"),
                format!("UPDATE tally.sessions SET status = 'completed' WHERE session_id = '{session}'"),
                // One row deleted, then many.
                format!("DELETE FROM tally.sessions WHERE user_id = '{jonas}'"),
                format!("DELETE FROM tally.sessions WHERE ctid IN
                         (SELECT ctid FROM tally.sessions WHERE user_id = '{kamile}' AND kind = 'learning_plan' LIMIT 2)"),
            ] {
                run(&sql);
            }
            // The plan allows 2 assessments: one is completed, two more are one too many.
            let refused = error_code(&format!(
                "INSERT INTO tally.sessions (user_id, kind, started_at) SELECT '{kamile}', 'assessment', now() FROM generate_series(1, 2)"
            ));
            crate::citus::routed_in_tests::ON.with(|on| on.set(false));
            assert_eq!(refused, Some("TL001".into()), "routed: {routed}");
            seen.push(
                Spi::get_one::<String>(&format!(
                    "SELECT string_agg(format('%s/%s', practice_sessions_used, assessments_used), '; ' ORDER BY user_id, period_start)
                       || ' | ' || (SELECT completed_sessions FROM tally.learning_plans WHERE user_id = '{kamile}')
                       FROM tally.usage WHERE user_id IN ('{kamile}', '{jonas}')"
                ))
                .unwrap(),
            );
        }
        assert_no_drift();
        assert_eq!(seen[0], seen[1]);
        // jonas's April row back to 0; kamile: the one learning-plan session left in
        // March, the assessment in the current period; the plan counts the one left.
        assert_eq!(seen[0].as_deref(), Some("0/0; 1/0; 0/1 | 1"));
    }

    /// A statement of BULK_ROWS rows or more takes the bulk plan (groups hashed, in key
    /// order): same counters, same limits, INSERT and UPDATE.
    #[pg_test]
    fn bulk_statements_count_and_check_limits_like_small_ones() {
        // (practice sessions, assessments) used by the bulk users, all periods.
        let bulk_usage = || {
            Spi::get_two::<i64, i64>(
                "SELECT sum(practice_sessions_used), sum(assessments_used) FROM tally.usage WHERE user_id LIKE 'bulk%'",
            )
            .unwrap()
        };
        fixtures();
        users_without_limits("bulk", 100, "1 month", "2026-01-01 00:00+00");
        run("INSERT INTO tally.sessions (user_id, kind, started_at)
             SELECT 'bulk' || (i % 100 + 1), CASE WHEN i % 4 = 0 THEN 'assessment' ELSE 'practice' END,
                    timestamptz '2026-01-01 00:00+00' + (i % 90) * interval '1 day'
               FROM generate_series(1, 12000) i");
        assert_eq!(bulk_usage(), (Some(9000), Some(3000)));
        assert_no_drift();
        // A bulk UPDATE: 12,000 started sessions completed in one statement.
        run(
            "INSERT INTO tally.sessions (user_id, kind, status, started_at)
             SELECT 'bulk' || (i % 100 + 1), 'practice', 'started',
                    timestamptz '2026-01-01 00:00+00' + (i % 90) * interval '1 day'
               FROM generate_series(1, 12000) i",
        );
        run("UPDATE tally.sessions SET status = 'completed' WHERE user_id LIKE 'bulk%' AND status = 'started'");
        assert_eq!(bulk_usage(), (Some(21000), Some(3000)));
        assert_no_drift();
        // kamile's plan allows 30 practice sessions a month: 12,000 are refused whole.
        assert_eq!(
            error_code(
                "INSERT INTO tally.sessions (user_id, kind, started_at)
                 SELECT 'kamile', 'practice', timestamptz '2026-03-05 10:00+00' FROM generate_series(1, 12000)"
            ),
            Some("TL001".into())
        );
        assert_eq!(usage("kamile", "2026-02-28 00:00+00"), (0, 0));
    }
}
