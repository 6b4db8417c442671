//! The mark on tally's own writes, the guards, verify and repair.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    use crate::pg::write_mark;
    use crate::tests::*;

    #[pg_test]
    fn internal_write_mark_is_cleared_when_a_counting_statement_fails() {
        fixtures();
        run("UPDATE tally.plans SET assessments_limit = 0");
        // The quota error is raised after the counting trigger wrote the usage row.
        let code = error_code("INSERT INTO tally.sessions (user_id, kind, started_at) VALUES ('kamile', 'assessment', '2026-03-06 10:00+00')");
        assert_eq!(code.as_deref(), Some("TL001"));
        assert!(
            !write_mark::active(),
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
            !write_mark::active(),
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
        assert!(!write_mark::active());
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
}
