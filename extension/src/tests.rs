//! In-process tests: each #[pg_test] runs inside a transaction that is rolled back.
//! SQL-visible behaviour and SQLSTATEs are covered by the pg_regress files; these
//! check what only the library can see.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    use crate::internal;

    fn run(sql: &str) {
        Spi::run(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    fn fixtures() {
        run("SET LOCAL timezone = 'UTC'");
        run("INSERT INTO tally.plans VALUES ('fluency_builder', 'Fluency Builder', 30, 2, '1 month')");
        run("INSERT INTO tally.subscriptions (user_id, plan_id, period_anchor) VALUES ('kamile', 'fluency_builder', '2026-01-31 00:00+00')");
    }

    /// Users `<prefix>1` … `<prefix><count>` on a plan without limits.
    fn users_without_limits(prefix: &str, count: i32, period: &str, anchor: &str) {
        run(&format!(
            "INSERT INTO tally.plans VALUES ('open', 'Open', NULL, NULL, '{period}')"
        ));
        run(&format!(
            "INSERT INTO tally.subscriptions (user_id, plan_id, period_anchor)
             SELECT '{prefix}' || i, 'open', '{anchor}' FROM generate_series(1, {count}) i"
        ));
    }

    fn usage(user: &str, period_start: &str) -> (i32, i32) {
        Spi::get_two_with_args::<i32, i32>(
            "SELECT practice_sessions_used, assessments_used FROM tally.usage WHERE user_id = $1 AND period_start = $2::timestamptz",
            &[user.into(), period_start.into()],
        )
        .map(|(p, a)| (p.unwrap_or(0), a.unwrap_or(0)))
        .unwrap_or((0, 0))
    }

    /// Every counter equals a recount (tally.verify() reports nothing).
    fn assert_no_drift() {
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM tally.verify()").unwrap(),
            Some(0),
            "tally.verify() reports drift"
        );
    }

    /// The SQLSTATE `sql` fails with, or None. Runs it in a PL/pgSQL exception block: a
    /// real subtransaction, so the failed statement is rolled back as a client would see.
    fn error_code(sql: &str) -> Option<String> {
        run("CREATE OR REPLACE FUNCTION pg_temp.error_code(sql text) RETURNS text LANGUAGE plpgsql AS $f$
             BEGIN EXECUTE sql; RETURN NULL; EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE; END $f$");
        Spi::get_one_with_args::<String>("SELECT pg_temp.error_code($1)", &[sql.into()]).unwrap()
    }

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
    fn internal_write_mark_is_cleared_when_a_counting_statement_fails() {
        fixtures();
        run("UPDATE tally.plans SET assessments_limit = 0");
        // The quota error is raised after the counting trigger wrote the usage row.
        let code = error_code("INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('kamile', 'assessment', '2026-03-06 10:00+00')");
        assert_eq!(code.as_deref(), Some("TL001"));
        assert!(
            !internal::active(),
            "the mark must not survive an aborted counting statement"
        );
        assert_eq!(usage("kamile", "2026-02-28 00:00+00"), (0, 0));
    }

    #[pg_test]
    fn internal_write_mark_is_cleared_when_an_error_unwinds_through_tally() {
        fixtures();
        // A user trigger on tally.usage makes tally's own counter write fail inside SPI.
        run(
            "CREATE FUNCTION pg_temp.refuse() RETURNS trigger LANGUAGE plpgsql AS $f$
             BEGIN RAISE EXCEPTION 'refused by a test trigger' USING ERRCODE = 'P0001'; END $f$",
        );
        run("CREATE TRIGGER zz_refuse BEFORE INSERT ON tally.usage FOR EACH ROW EXECUTE FUNCTION pg_temp.refuse()");
        let code = error_code("INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('kamile', 'practice', '2026-03-06 10:00+00')");
        assert_eq!(code.as_deref(), Some("P0001"));
        assert!(
            !internal::active(),
            "the mark must be dropped while the error unwinds"
        );
        run("DROP TRIGGER zz_refuse ON tally.usage");
        assert_eq!(
            error_code("DELETE FROM tally.usage").as_deref(),
            Some("TL004")
        );
    }

    #[pg_test]
    fn direct_usage_writes_fail_even_after_tally_wrote() {
        fixtures();
        run("INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('kamile', 'practice', '2026-03-06 10:00+00')");
        assert!(!internal::active());
        assert_eq!(
            error_code("UPDATE tally.usage SET practice_sessions_used = 100").as_deref(),
            Some("TL004")
        );
        assert_eq!(usage("kamile", "2026-02-28 00:00+00"), (1, 0));
    }

    #[pg_test]
    fn verify_reports_drift_counter_by_counter_and_repair_fixes_it() {
        fixtures();
        run("INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('kamile', 'practice', '2026-03-06 10:00+00')");
        run("SET LOCAL session_replication_role = replica");
        run(
            "INSERT INTO tally.sessions (user_id, kind, started_at, completed_at)
             VALUES ('kamile', 'practice', '2026-03-07 10:00+00', '2026-03-07 10:30+00'),
                    ('kamile', 'assessment', '2026-03-07 11:00+00', '2026-03-07 11:30+00')",
        );
        run("SET LOCAL session_replication_role = origin");
        let drift = Spi::get_one::<String>(
            "SELECT string_agg(format('%s %s %s->%s', object, counter, stored, actual), '; ' ORDER BY counter) FROM tally.verify()",
        )
        .unwrap();
        assert_eq!(
            drift.as_deref(),
            Some("usage assessments_used 0->1; usage practice_sessions_used 1->2")
        );
        assert_eq!(
            Spi::get_one::<i64>("SELECT tally.repair()").unwrap(),
            Some(2)
        );
        assert_eq!(usage("kamile", "2026-02-28 00:00+00"), (2, 1));
        assert_no_drift();
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM tally.adjustments").unwrap(),
            Some(2)
        );
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

    #[pg_test]
    fn reservation_checks_use_the_index_even_when_planned_on_an_empty_table() {
        fixtures();
        // An analyzed empty table makes a sequential scan look free to the planner;
        // DISCARD PLANS makes tally plan its statements again, now.
        run("ANALYZE tally.sessions");
        run("DISCARD PLANS");
        let seq_scans = || {
            Spi::get_one::<i64>("SELECT pg_stat_get_xact_numscans('tally.sessions'::regclass)")
                .unwrap()
                .unwrap_or(0)
        };
        let before = seq_scans();
        // More executions than the plan cache's five custom plans, so the cached
        // generic plan is built and used too.
        for day in 1..=8 {
            run(&format!(
                "INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('kamile', 'practice', '2026-03-{day:02} 10:00+00')"
            ));
        }
        assert_eq!(usage("kamile", "2026-02-28 00:00+00"), (8, 0));
        assert_eq!(
            seq_scans(),
            before,
            "limit checks must not scan tally.sessions sequentially"
        );
    }

    /// Reservations counted by key (crate::keyed) and by the SQL statement they
    /// replace, over sessions of every status, kind, age and user.
    #[pg_test]
    fn reservations_read_by_key_match_the_sql_count() {
        fixtures();
        run("INSERT INTO tally.session_kinds VALUES ('warmup', 'none')");
        run("INSERT INTO tally.subscriptions (user_id, plan_id, period_anchor) VALUES ('jonas', 'fluency_builder', '2026-01-31 00:00+00')");
        for (user, kind, status, age) in [
            ("kamile", "practice", "started", "1 hour"),
            ("kamile", "learning_plan", "started", "10 minutes"),
            ("kamile", "assessment", "started", "30 minutes"),
            ("kamile", "warmup", "started", "5 minutes"),
            ("kamile", "practice", "started", "3 hours"),
            ("kamile", "practice", "completed", "20 minutes"),
            ("kamile", "assessment", "abandoned", "20 minutes"),
            ("jonas", "assessment", "started", "5 minutes"),
        ] {
            let completed = if status == "completed" {
                "now()"
            } else {
                "NULL"
            };
            run(&format!(
                "INSERT INTO tally.sessions (user_id, kind, status, started_at, completed_at)
                 VALUES ('{user}', '{kind}', '{status}', now() - interval '{age}', {completed})"
            ));
        }
        let (start, end) = Spi::get_two::<TimestampWithTimeZone, TimestampWithTimeZone>(
            "SELECT tally.period_start_for('2026-01-31 00:00+00', '1 month', now()),
                    tally.period_end_for('2026-01-31 00:00+00', '1 month', now())",
        )
        .unwrap();
        let (start, end) = (start.unwrap(), end.unwrap());
        let by_sql = Spi::get_two_with_args::<i32, i32>(
            crate::limits::RESERVATIONS_SQL,
            &[String::from("kamile").into(), start.into(), end.into()],
        )
        .unwrap();
        let by_key = crate::keyed::Reservations::here()
            .map(|mut r| r.count("kamile", start, end, crate::keyed::reservation_cutoff()));
        // Two practice sessions (the 3-hour-old one has expired), one assessment; the
        // warm-up counts nowhere, jonas's session is his.
        assert_eq!(by_sql, (Some(2), Some(1)));
        assert_eq!(by_key, Some((2, 1)));
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
        assert!(crate::keyed::Tables::here().is_none());
        assert!(crate::keyed::Reservations::here().is_none());
        run("INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('kamile', 'practice', now() - interval '1 minute')");
        assert_eq!(bound(), None);
        assert_eq!(practice_now(), Some(2));
        run("SET LOCAL tally.fast_path = on");
        assert!(crate::keyed::Reservations::here().is_some());
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

    /// A relcache invalidation forgets only the table it names: DDL elsewhere keeps
    /// what was resolved and the plans kept, an index built on tally.usage forgets
    /// tally.usage alone, and a write to tally.plans forgets the plans kept.
    #[pg_test]
    fn invalidations_forget_only_the_table_they_name() {
        fixtures();
        run("INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('kamile', 'practice', now() - interval '1 minute')");
        run("INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('kamile', 'practice', now() - interval '1 minute')");
        let kept = || {
            crate::reference::catch_up();
            (
                crate::keyed::resolved_names(),
                crate::reference::plan("fluency_builder").is_some(),
            )
        };
        let (before, plan_kept) = kept();
        assert!(before.contains(&"tally.usage".to_string()), "{before:?}");
        assert!(before.contains(&"tally.plans".to_string()), "{before:?}");
        assert!(plan_kept);
        run("CREATE TABLE public.unrelated (x int)");
        run("CREATE INDEX ON public.unrelated (x)");
        run("ALTER TABLE public.unrelated ADD CONSTRAINT x_positive CHECK (x > 0)");
        assert_eq!(kept(), (before.clone(), true));
        run("CREATE INDEX usage_period_end_idx ON tally.usage (period_end)");
        let (after, plan_kept) = kept();
        let expected: Vec<String> = before
            .iter()
            .filter(|n| *n != "tally.usage")
            .cloned()
            .collect();
        assert_eq!(after, expected);
        assert!(plan_kept);
        run("UPDATE tally.plans SET display_name = 'Fluency Builder 2' WHERE plan_id = 'fluency_builder'");
        assert!(!kept().1);
    }

    /// Without the reservation index the count falls back to SQL, and limits hold.
    #[pg_test]
    fn limits_hold_without_the_reservation_index() {
        fixtures();
        run("DROP INDEX tally.sessions_reservations_idx");
        assert!(crate::keyed::Reservations::here().is_none());
        // The plan allows 2 assessments: two started ones hold both slots.
        for _ in 0..2 {
            run("INSERT INTO tally.sessions (user_id, kind, status) VALUES ('kamile', 'assessment', 'started')");
        }
        assert_eq!(
            error_code("INSERT INTO tally.sessions (user_id, kind, status) VALUES ('kamile', 'assessment', 'started')"),
            Some("TL001".into())
        );
    }

    /// Counter rows updated by key (crate::keyed::add_to_usage) stay reachable
    /// through their index when the new version leaves the page (not a HOT update).
    #[pg_test]
    fn usage_updated_by_key_off_its_page_stays_indexed() {
        fixtures();
        users_without_limits("u", 400, "1 month", "2026-01-31 00:00+00");
        // One usage row per user, packed into full pages (no room kept for updates).
        run("ALTER TABLE tally.usage SET (fillfactor = 100)");
        run("INSERT INTO tally.sessions (user_id, kind, started_at)
             SELECT 'u' || i, 'practice', '2026-03-05 10:00+00' FROM generate_series(1, 400) i");
        let updates = |column: &str| {
            Spi::get_one::<i64>(&format!("SELECT {column}('tally.usage'::regclass)"))
                .unwrap()
                .unwrap_or(0)
        };
        let (updated, hot) = (
            updates("pg_stat_get_xact_tuples_updated"),
            updates("pg_stat_get_xact_tuples_hot_updated"),
        );
        // Versions written by this transaction cannot be pruned: enough of them fill
        // any page, whatever room it had.
        let n = 300;
        for _ in 0..n {
            run("INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('u1', 'practice', '2026-03-06 10:00+00')");
        }
        assert_eq!(updates("pg_stat_get_xact_tuples_updated") - updated, n);
        assert!(
            updates("pg_stat_get_xact_tuples_hot_updated") - hot < n,
            "some update must have left its page"
        );
        run("SET LOCAL enable_seqscan = off");
        run("SET LOCAL enable_bitmapscan = off");
        assert_eq!(usage("u1", "2026-02-28 00:00+00"), (n as i32 + 1, 0));
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM tally.usage WHERE user_id = 'u1'").unwrap(),
            Some(1)
        );
        assert_no_drift();
    }

    /// A primary key of another shape (here with an INCLUDE column that every
    /// counter write changes, so no update is HOT) gets the index tuples the
    /// executor would form: amcheck finds every row version in the index as it is.
    #[pg_test]
    fn usage_key_with_include_columns_is_indexed_as_the_executor_would() {
        fixtures();
        run("CREATE EXTENSION IF NOT EXISTS amcheck");
        run("ALTER TABLE tally.usage DROP CONSTRAINT usage_pkey,
             ADD CONSTRAINT usage_pkey PRIMARY KEY (user_id, period_start) INCLUDE (practice_sessions_used)");
        let hot = || {
            Spi::get_one::<i64>(
                "SELECT pg_stat_get_xact_tuples_hot_updated('tally.usage'::regclass)",
            )
            .unwrap()
            .unwrap_or(0)
        };
        for _ in 0..20 {
            run("INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('kamile', 'practice', '2026-03-06 10:00+00')");
        }
        assert_eq!(
            hot(),
            0,
            "an update that changes an INCLUDE column is not HOT"
        );
        run("SELECT bt_index_check('tally.usage_pkey', heapallindexed => true)");
        assert_eq!(usage("kamile", "2026-02-28 00:00+00"), (20, 0));
        assert_no_drift();
    }

    /// PostgreSQL 18's virtual generated columns may be NOT NULL, which the executor
    /// checks on every write: with one on tally.usage, the counter write takes the
    /// upsert, where PostgreSQL refuses the row.
    #[cfg(feature = "pg18")]
    #[pg_test(
        error = "null value in column \"capped\" of relation \"usage\" violates not-null constraint"
    )]
    fn virtual_generated_not_null_on_usage_is_checked() {
        fixtures();
        run("ALTER TABLE tally.usage ADD COLUMN capped integer
             GENERATED ALWAYS AS (CASE WHEN practice_sessions_used < 2 THEN 1 END) VIRTUAL NOT NULL");
        for _ in 0..2 {
            run("INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('kamile', 'practice', '2026-03-06 10:00+00')");
        }
    }

    /// A trigger someone adds to tally.usage still fires for tally's counter
    /// updates: with it, they take the upsert instead of the update by key.
    #[pg_test]
    fn triggers_added_to_usage_fire_for_counter_updates() {
        fixtures();
        run("CREATE TEMP TABLE usage_audit (user_id text, practice integer)");
        run("CREATE FUNCTION pg_temp.audit_usage() RETURNS trigger LANGUAGE plpgsql AS $f$
             BEGIN INSERT INTO pg_temp.usage_audit VALUES (NEW.user_id, NEW.practice_sessions_used); RETURN NULL; END $f$");
        run("CREATE TRIGGER usage_audit AFTER UPDATE ON tally.usage FOR EACH ROW EXECUTE FUNCTION pg_temp.audit_usage()");
        for day in 1..=3 {
            run(&format!(
                "INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('kamile', 'practice', '2026-03-{day:02} 10:00+00')"
            ));
        }
        assert_eq!(usage("kamile", "2026-02-28 00:00+00"), (3, 0));
        // The first session inserted the row; the next two updated it.
        assert_eq!(
            Spi::get_one::<String>(
                "SELECT string_agg(practice::text, ',' ORDER BY practice) FROM usage_audit"
            )
            .unwrap(),
            Some("2,3".into())
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

    /// The usage document escapes its strings in Rust: exactly as PostgreSQL's JSON
    /// functions do (to_json of a text), for every ASCII character and beyond.
    #[pg_test]
    fn usage_document_strings_are_escaped_as_postgres_escapes_them() {
        let mut samples: Vec<String> = (1u8..=127).map(|b| format!("a{}b", b as char)).collect();
        samples.push("Łódź 日本語 \u{1F600} \u{2028}".into());
        samples.push(String::new());
        for sample in samples {
            let expected = Spi::get_one_with_args::<String>(
                "SELECT to_json($1::text)::text",
                &[sample.clone().into()],
            )
            .unwrap()
            .unwrap();
            let mut ours = String::new();
            crate::document::escape_json(&mut ours, &sample);
            assert_eq!(ours, expected, "{sample:?}");
        }
    }

    /// record_session's answer is written in Rust: exactly what json_build_object of
    /// row_to_json and the usage document writes, for NULLs, escaped text, uuids and
    /// timestamps in a time zone with a fractional offset.
    #[pg_test]
    fn record_session_answer_is_written_as_postgres_writes_it() {
        fixtures();
        run(
            r#"INSERT INTO tally.session_kinds VALUES (E'odd "kind"\n\t\u00e9 \\ \x01', 'practice_sessions')"#,
        );
        run(
            r#"INSERT INTO tally.learning_plans (learning_plan_id, user_id, title, total_sessions)
             VALUES ('0a000000-0000-4000-8000-00000000000f', 'kamile', 'Plan "A"', 10)"#,
        );
        run(
            r#"INSERT INTO tally.sessions (session_id, user_id, kind, learning_plan_id, status, started_at, completed_at, duration_seconds) VALUES
             ('ffffffff-ffff-4fff-bfff-ffffffffffff', 'kamile', 'practice', NULL, 'completed', now() - interval '1 hour', NULL, NULL),
             ('00000000-0000-4000-8000-000000000000', 'kamile', 'assessment', NULL, 'started', now() - interval '1.5 seconds', NULL, 0),
             ('0123abcd-4567-489a-bcde-f0123456789a', 'kamile', E'odd "kind"\n\t\u00e9 \\ \x01', '0a000000-0000-4000-8000-00000000000f',
              'completed', '2026-02-01 10:00:00.000001+00', '2026-02-01 10:30:00+00', 2147483647),
             ('0123abcd-4567-489a-bcde-f0123456789b', 'kamile', 'learning_plan', '0a000000-0000-4000-8000-00000000000f',
              'abandoned', now(), now(), 60)"#,
        );
        for zone in ["UTC", "America/St_Johns", "Asia/Kathmandu"] {
            run(&format!("SET LOCAL timezone = '{zone}'"));
            let differ = Spi::get_one::<i64>(
                "SELECT count(*) FROM tally.sessions x, (VALUES (true), (false)) c(created)
                  WHERE tally.record_session_answer(c.created, x.session_id, x.user_id, x.kind, x.learning_plan_id,
                                                    x.status, x.started_at, x.completed_at, x.duration_seconds,
                                                    x.created_at)::text
                        IS DISTINCT FROM json_build_object('created', c.created, 'session', row_to_json(x),
                                                           'usage', tally.usage_document(x.user_id))::text",
            )
            .unwrap();
            assert_eq!(differ, Some(0), "answers that differ in {zone}");
        }
        // A user without a subscription has no usage document: null, as before.
        let answer = Spi::get_one::<String>(
            "SELECT tally.record_session_answer(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)::text",
        )
        .unwrap();
        assert_eq!(
            answer.as_deref(),
            Some(
                r#"{"created" : null, "session" : {"session_id":null,"user_id":null,"kind":null,"learning_plan_id":null,"status":null,"started_at":null,"completed_at":null,"duration_seconds":null,"created_at":null}, "usage" : null}"#
            )
        );
        let expected = Spi::get_one::<String>(
            "SELECT json_build_object('created', true, 'session', row_to_json(x), 'usage', NULL::json)::text
               FROM (SELECT 'ffffffff-ffff-4fff-bfff-ffffffffffff'::uuid AS session_id, 'nobody'::text AS user_id,
                            'practice'::text AS kind, NULL::uuid AS learning_plan_id, 'completed'::text AS status,
                            now() AS started_at, now() AS completed_at, 5 AS duration_seconds, now() AS created_at) x",
        )
        .unwrap();
        let ours = Spi::get_one::<String>(
            "SELECT tally.record_session_answer(true, 'ffffffff-ffff-4fff-bfff-ffffffffffff', 'nobody', 'practice', NULL,
                                                'completed', now(), now(), 5, now())::text",
        )
        .unwrap();
        assert_eq!(ours, expected);
    }
}
