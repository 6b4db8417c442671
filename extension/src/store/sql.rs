//! The SQL backend of the data seam, and its reference: every read and write of
//! `store::Store` as an SPI statement (routed by `user_id` on Citus, where tally's
//! tables are not this node's own), and the set-based path's batched upsert.

use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::domain::meter::{Feeds, PerSlot, Slot};
use crate::domain::reservation::cutoff_sql;
use crate::pg::spi::{
    get, get_nullable, run_cached, run_cached_as_planned, INT4, TEXT, TIMESTAMPTZ, UUID,
};
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
pub(crate) struct Upserts {
    pub(crate) one: &'static str,
    pub(crate) many: &'static str,
}

pub(super) const UPSERTS_CLEARING_BOUND: Upserts = Upserts {
    one: raise_one_sql!(",\n       started_bound = NULL"),
    many: raise_many_sql!(",\n       started_bound = NULL"),
};

pub(super) const UPSERTS: Upserts = Upserts {
    one: raise_one_sql!(""),
    many: raise_many_sql!(""),
};

pub(crate) fn upserts() -> &'static Upserts {
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
/// serializes limit checks. Returns the counters after the write.
pub(crate) fn raise(
    client: &mut SpiClient<'_>,
    user_id: &str,
    start: TimestampWithTimeZone,
    end: TimestampWithTimeZone,
    change: &rows::UsageChange,
) -> rows::UsageWritten {
    let row = run_cached_as_planned(
        client,
        upserts().one,
        &[TEXT, TIMESTAMPTZ, TIMESTAMPTZ, INT4, INT4],
        &[
            user_id.into(),
            start.into(),
            end.into(),
            change.used[Slot::PRACTICE_SESSIONS].into(),
            change.used[Slot::ASSESSMENTS].into(),
        ],
    )
    .next()
    .expect("an upsert returns its row");
    rows::UsageWritten {
        used: PerSlot::new([get(&row, 1), get(&row, 2)]),
        reservations: None,
    }
}

/// Subtracts from a usage row, which exists: the sessions it counted did.
pub(crate) fn lower(
    client: &mut SpiClient<'_>,
    user_id: &str,
    start: TimestampWithTimeZone,
    change: PerSlot<i32>,
) {
    run_cached(
        client,
        LOWER_ONE_SQL,
        &[TEXT, TIMESTAMPTZ, INT4, INT4],
        &[
            user_id.into(),
            start.into(),
            change[Slot::PRACTICE_SESSIONS].into(),
            change[Slot::ASSESSMENTS].into(),
        ],
    );
}

pub(crate) fn change_plan(
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

/// The single changed row of a statement, from its transition table.
macro_rules! changed_row_sql {
    ($table:literal) => {
        concat!(
            "SELECT user_id, kind, status, started_at, learning_plan_id, session_id FROM ",
            $table
        )
    };
}

/// The one row of transition table `tally_new` (`new`) or `tally_old`.
pub(crate) fn changed_row(client: &mut SpiClient<'_>, new: bool) -> Option<rows::ChangedRow> {
    let sql = if new {
        changed_row_sql!("tally_new")
    } else {
        changed_row_sql!("tally_old")
    };
    let row = run_cached(client, sql, &[], &[]).next()?;
    Some(rows::ChangedRow {
        user_id: get(&row, 1),
        kind: get(&row, 2),
        status: get(&row, 3),
        started_at: get(&row, 4),
        learning_plan_id: get_nullable(&row, 5),
        session_id: get(&row, 6),
    })
}

/// A user's subscription and plan, routed by user_id (plans is a reference table on
/// Citus).
const SUBSCRIPTION_SQL: &str = "
SELECT s.period_anchor, p.period, p.practice_sessions_limit, p.assessments_limit, s.plan_id
  FROM tally.subscriptions s JOIN tally.plans p ON p.plan_id = s.plan_id
 WHERE s.user_id = $1";

/// The subscription of `user_id` and its plan; None when there is none.
pub(crate) fn subscription(
    client: &mut SpiClient<'_>,
    user_id: &str,
) -> Option<rows::Subscription> {
    run_cached(client, SUBSCRIPTION_SQL, &[TEXT], &[user_id.into()])
        .next()
        .map(|row| rows::Subscription {
            anchor: get(&row, 1),
            period: get(&row, 2),
            limits: PerSlot::new([get_nullable(&row, 3), get_nullable(&row, 4)]),
            plan_id: get(&row, 5),
        })
}

const COUNTER_SQL: &str = "SELECT counter FROM tally.session_kinds WHERE kind = $1";

/// The slots session kind `kind` feeds; the kind exists (the session's foreign key).
pub(crate) fn feeds(client: &mut SpiClient<'_>, kind: &str) -> Feeds {
    let row = run_cached(client, COUNTER_SQL, &[TEXT], &[kind.into()])
        .next()
        .expect("tally: a session's kind exists (foreign key)");
    Feeds::from_counter(&get::<String>(&row, 1))
}

/// Started sessions still holding a reservation in one (user, period), per slot:
/// the same index range for every slot, and the usage document needs them all. A
/// separate statement so that its snapshot is taken after the usage row lock; scalar
/// parameters so that its plan is prepared once.
pub(crate) const RESERVATIONS_SQL: &str = concat!(
    r#"
SELECT count(*) FILTER (WHERE k.counter = 'practice_sessions')::int,
       count(*) FILTER (WHERE k.counter = 'assessments')::int
  FROM tally.sessions x
  JOIN tally.session_kinds k ON k.kind = x.kind
 WHERE x.user_id = $1 AND x.status = 'started'
   AND x.started_at >= $2 AND x.started_at < $3
   AND x.started_at > "#,
    cutoff_sql!(),
    "\n"
);

/// The reservations in one (user, period), per slot.
pub(crate) fn reservations(
    client: &mut SpiClient<'_>,
    user_id: &str,
    start: TimestampWithTimeZone,
    end: TimestampWithTimeZone,
) -> PerSlot<i32> {
    let row = run_cached(
        client,
        RESERVATIONS_SQL,
        &[TEXT, TIMESTAMPTZ, TIMESTAMPTZ],
        &[user_id.into(), start.into(), end.into()],
    )
    .next()
    .expect("a count returns a row");
    PerSlot::new([get(&row, 1), get(&row, 2)])
}
