//! The counter write through SQL: the upserts that raise a usage row, the update that
//! lowers one, and a learning plan's completed sessions.

use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::pg::spi::{get, run_cached, run_cached_as_planned, INT4, TEXT, TIMESTAMPTZ, UUID};
use crate::store::rows;

/// The counter upsert of one (user, period). Where tally.usage has `started_bound`
/// (crate::store::rows::add_to_usage), a write through SQL makes it unknown (NULL): only
/// the write by key keeps it.
macro_rules! raise_one_sql {
    ($bound:literal) => {
        concat!(
            r#"
INSERT INTO tally.usage AS u (user_id, period_start, period_end, practice_sessions_used, assessments_used)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (user_id, period_start) DO UPDATE
   SET practice_sessions_used = u.practice_sessions_used + excluded.practice_sessions_used,
       assessments_used = u.assessments_used + excluded.assessments_used"#,
            $bound,
            r#"
RETURNING practice_sessions_used, assessments_used
"#
        )
    };
}

/// raise_one_sql! for many (user, period) groups at once, in key order, where the
/// usage table is this node's own (one node, or a co-located shard): one statement
/// for a bulk load instead of one per group.
macro_rules! raise_many_sql {
    ($bound:literal) => {
        concat!(
            r#"
INSERT INTO tally.usage AS u (user_id, period_start, period_end, practice_sessions_used, assessments_used)
SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::int[], $5::int[])
 ORDER BY 1, 2
ON CONFLICT (user_id, period_start) DO UPDATE
   SET practice_sessions_used = u.practice_sessions_used + excluded.practice_sessions_used,
       assessments_used = u.assessments_used + excluded.assessments_used"#,
            $bound,
            r#"
RETURNING user_id, period_start, practice_sessions_used, assessments_used
"#
        )
    };
}

/// The upserts (raise_one_sql!, raise_many_sql!) for a usage table with or without
/// `started_bound`.
pub(super) struct Upserts {
    pub(super) one: &'static str,
    pub(super) many: &'static str,
}

pub(super) const UPSERTS_CLEARING_BOUND: Upserts = Upserts {
    one: raise_one_sql!(",\n       started_bound = NULL"),
    many: raise_many_sql!(",\n       started_bound = NULL"),
};

pub(super) const UPSERTS: Upserts = Upserts {
    one: raise_one_sql!(""),
    many: raise_many_sql!(""),
};

pub(super) fn upserts() -> &'static Upserts {
    if rows::usage_keeps_started_bound() {
        &UPSERTS_CLEARING_BOUND
    } else {
        &UPSERTS
    }
}

pub(super) const LOWER_ONE_SQL: &str = r#"
UPDATE tally.usage
   SET practice_sessions_used = practice_sessions_used + $3,
       assessments_used = assessments_used + $4
 WHERE user_id = $1 AND period_start = $2
"#;

pub(super) const PLAN_ONE_SQL: &str =
    "UPDATE tally.learning_plans SET completed_sessions = completed_sessions + $3
 WHERE user_id = $1 AND learning_plan_id = $2";

/// Makes the bound on started sessions of every usage row unknown (NULL), where
/// tally.usage keeps one (crate::store::rows::add_to_usage): after writes no trigger counted
/// (tally.repair()), or when a kind that counted nothing starts counting. The next
/// single-row write of each row counts its reservations and writes the bound again.
/// The caller holds an InternalWrite and runs as the tables' owner.
pub(crate) fn forget_started_bounds() {
    if rows::usage_keeps_started_bound() {
        Spi::run("UPDATE tally.usage SET started_bound = NULL WHERE started_bound IS NOT NULL")
            .unwrap_or_else(|e| panic!("tally: cannot forget the bounds on started sessions: {e}"));
    }
}

/// Adds to a usage row, creating it if needed; the write takes the row lock that
/// serializes limit checks. An existing row is updated by key without the executor
/// where that means the same (crate::store::rows::add_to_usage), else the upsert runs.
/// Returns the counters after the write, and the reservations when known.
pub(super) fn raise(
    client: &mut SpiClient<'_>,
    user_id: &str,
    start: TimestampWithTimeZone,
    end: TimestampWithTimeZone,
    change: &rows::UsageChange,
) -> rows::UsageWritten {
    if let Some(written) = rows::add_to_usage(user_id, start, end, change) {
        return written;
    }
    let row = run_cached_as_planned(
        client,
        upserts().one,
        &[TEXT, TIMESTAMPTZ, TIMESTAMPTZ, INT4, INT4],
        &[
            user_id.into(),
            start.into(),
            end.into(),
            change.practice.into(),
            change.assessments.into(),
        ],
    )
    .next()
    .expect("an upsert returns its row");
    rows::UsageWritten {
        used: (get(&row, 1), get(&row, 2)),
        reservations: None,
    }
}

/// Subtracts from a usage row, which exists: the sessions it counted did.
pub(super) fn lower(
    client: &mut SpiClient<'_>,
    user_id: &str,
    start: TimestampWithTimeZone,
    practice: i32,
    assessments: i32,
) {
    run_cached(
        client,
        LOWER_ONE_SQL,
        &[TEXT, TIMESTAMPTZ, INT4, INT4],
        &[
            user_id.into(),
            start.into(),
            practice.into(),
            assessments.into(),
        ],
    );
}

pub(super) fn change_plan(
    client: &mut SpiClient<'_>,
    user_id: String,
    plan: pgrx::Uuid,
    delta: i32,
) {
    run_cached(
        client,
        PLAN_ONE_SQL,
        &[TEXT, UUID, INT4],
        &[user_id.into(), plan.into(), delta.into()],
    );
}
