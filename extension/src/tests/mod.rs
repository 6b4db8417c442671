//! In-process tests: each #[pg_test] runs inside a transaction that is rolled back.
//! SQL-visible behaviour and SQLSTATEs are covered by the pg_regress files; these
//! check what only the library can see.
//!
//! The helpers below are shared by the files of each area.

use pgrx::prelude::*;

mod answer;
mod counting;
mod rules;
mod store;

pub(crate) fn run(sql: &str) {
    Spi::run(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
}

pub(crate) fn fixtures() {
    run("SET LOCAL timezone = 'UTC'");
    run("INSERT INTO tally.plans VALUES ('fluency_builder', 'Fluency Builder', 30, 2, '1 month')");
    run("INSERT INTO tally.subscriptions (user_id, plan_id, period_anchor) VALUES ('kamile', 'fluency_builder', '2026-01-31 00:00+00')");
}

/// Users `<prefix>1` … `<prefix><count>` on a plan without limits.
pub(crate) fn users_without_limits(prefix: &str, count: i32, period: &str, anchor: &str) {
    run(&format!(
        "INSERT INTO tally.plans VALUES ('open', 'Open', NULL, NULL, '{period}')"
    ));
    run(&format!(
        "INSERT INTO tally.subscriptions (user_id, plan_id, period_anchor)
         SELECT '{prefix}' || i, 'open', '{anchor}' FROM generate_series(1, {count}) i"
    ));
}

pub(crate) fn usage(user: &str, period_start: &str) -> (i32, i32) {
    Spi::get_two_with_args::<i32, i32>(
        "SELECT practice_sessions_used, assessments_used FROM tally.usage WHERE user_id = $1 AND period_start = $2::timestamptz",
        &[user.into(), period_start.into()],
    )
    .map(|(p, a)| (p.unwrap_or(0), a.unwrap_or(0)))
    .unwrap_or((0, 0))
}

/// Every counter equals a recount (tally.verify() reports nothing).
pub(crate) fn assert_no_drift() {
    assert_eq!(
        Spi::get_one::<i64>("SELECT count(*) FROM tally.verify()").unwrap(),
        Some(0),
        "tally.verify() reports drift"
    );
}

/// The SQLSTATE `sql` fails with, or None. Runs it in a PL/pgSQL exception block: a
/// real subtransaction, so the failed statement is rolled back as a client would see.
pub(crate) fn error_code(sql: &str) -> Option<String> {
    run("CREATE OR REPLACE FUNCTION pg_temp.error_code(sql text) RETURNS text LANGUAGE plpgsql AS $f$
         BEGIN EXECUTE sql; RETURN NULL; EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE; END $f$");
    Spi::get_one_with_args::<String>("SELECT pg_temp.error_code($1)", &[sql.into()]).unwrap()
}
