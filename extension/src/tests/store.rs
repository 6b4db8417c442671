//! The reads and the counter write by key against what SQL and the executor do.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    use crate::tests::*;

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

    /// Reservations counted by key (crate::store::heap) and by the SQL statement they
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
            crate::store::sql::RESERVATIONS_SQL,
            &[String::from("kamile").into(), start.into(), end.into()],
        )
        .unwrap();
        let by_key = crate::store::rows::Reservations::here().map(|mut r| {
            r.count(
                "kamile",
                start,
                end,
                crate::domain::reservation::reservation_cutoff(),
            )
        });
        // Two practice sessions (the 3-hour-old one has expired), one assessment; the
        // warm-up counts nowhere, jonas's session is his.
        assert_eq!(by_sql, (Some(2), Some(1)));
        assert_eq!(by_key, Some(crate::domain::meter::PerSlot::new([2, 1])));
    }

    /// tally's own statements and tally.current_usage hold reservations back to the
    /// same cutoff (crate::domain::reservation::cutoff_sql!).
    #[pg_test]
    fn statements_and_the_usage_view_share_one_reservation_cutoff() {
        let cutoff = crate::domain::reservation::cutoff_sql!();
        let view = Spi::get_one::<String>(
            "SELECT pg_catalog.pg_get_viewdef('tally.current_usage'::regclass)",
        )
        .unwrap()
        .unwrap();
        assert!(view.contains(cutoff), "{view}");
        assert!(crate::store::sql::RESERVATIONS_SQL.contains(cutoff));
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
            crate::store::catalog_cache::catch_up();
            (
                crate::store::heap::resolved_names(),
                crate::store::catalog_cache::plan("fluency_builder").is_some(),
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

    /// Counter rows updated by key (crate::store::rows::add_to_usage) stay reachable
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
}
