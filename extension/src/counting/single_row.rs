//! The single-row path (the API's and every ORM's): the changed row read with its
//! subscription and kind, by key where tally's tables are this node's own
//! (crate::store::rows), through SPI elsewhere, and applied in Rust.

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::counting::limits::LimitCheck;
use crate::domain::meter::Counter;
use crate::pg::settings;
use crate::pg::spi::{get, get_nullable, run_cached, TEXT};
use crate::store::rows;

use super::usage_write::{change_plan, lower, raise};

/// The single changed row of a statement, read through SPI where tally's tables are
/// not this node's own (else it is read directly, crate::store::heap).
macro_rules! one_row_sql {
    ($table:literal) => {
        concat!(
            "SELECT user_id, kind, status, started_at, learning_plan_id, session_id,
                    status = 'started' AND started_at <= now() - tally.reservation_timeout()
               FROM ",
            $table
        )
    };
}

/// The transition table a single-row path reads.
#[derive(Clone, Copy)]
pub(super) enum Transition {
    New,
    Old,
}

impl Transition {
    fn sql(self) -> &'static str {
        match self {
            Transition::New => one_row_sql!("tally_new"),
            Transition::Old => one_row_sql!("tally_old"),
        }
    }

    fn table(self, data: &pg_sys::TriggerData) -> *mut pg_sys::Tuplestorestate {
        match self {
            Transition::New => data.tg_newtable,
            Transition::Old => data.tg_oldtable,
        }
    }
}

/// A user's subscription and plan, routed by user_id (plans is a reference table on
/// Citus); read through SPI where tally's tables are not this node's own.
pub(super) const SUBSCRIPTION_SQL: &str = "
SELECT s.period_anchor, p.period, p.practice_sessions_limit, p.assessments_limit, s.plan_id
  FROM tally.subscriptions s JOIN tally.plans p ON p.plan_id = s.plan_id
 WHERE s.user_id = $1";

pub(super) const COUNTER_SQL: &str = "SELECT counter FROM tally.session_kinds WHERE kind = $1";

/// What counting needs to know of one session row.
pub(super) struct RowFacts {
    pub(super) user_id: String,
    pub(super) status: String,
    pub(super) started_at: TimestampWithTimeZone,
    pub(super) learning_plan_id: Option<pgrx::Uuid>,
    pub(super) counter: Counter,
    pub(super) anchor: TimestampWithTimeZone,
    pub(super) period: Interval,
    pub(super) practice_limit: Option<i32>,
    pub(super) assessments_limit: Option<i32>,
    pub(super) session_id: pgrx::Uuid,
    pub(super) plan_id: String,
    /// A started session whose reservation has expired (by tally.reservation_timeout).
    pub(super) expired: bool,
}

/// The usage row of a session's period after an upsert.
pub(super) struct UsageAfter {
    pub(super) period_start: TimestampWithTimeZone,
    pub(super) period_end: TimestampWithTimeZone,
    pub(super) practice_used: i32,
    pub(super) assessments_used: i32,
}

/// What applying one row did: the limit check it needs, the usage row it raised, and
/// the reservations in that row's period when they were known under its lock.
pub(super) struct Applied {
    pub(super) checks: Vec<LimitCheck>,
    pub(super) usage: Option<UsageAfter>,
    pub(super) reservations: Option<(i32, i32)>,
}

impl RowFacts {
    fn completed(&self) -> bool {
        self.status == "completed"
    }

    fn limit(&self) -> Option<i32> {
        self.counter.of(self.practice_limit, self.assessments_limit)
    }

    fn period_bounds(&self) -> (TimestampWithTimeZone, TimestampWithTimeZone) {
        crate::domain::period::period_bounds(self.anchor, &self.period, self.started_at)
    }
}

/// A user's subscription and plan; None when there is none (its deletion cascades
/// to the user's rows).
pub(super) fn subscription(
    client: &mut SpiClient<'_>,
    reads: Option<&rows::Tables>,
    user_id: &str,
) -> Option<rows::Subscription> {
    if let Some(found) = reads.and_then(|reads| reads.subscription(user_id)) {
        return found;
    }
    run_cached(client, SUBSCRIPTION_SQL, &[TEXT], &[user_id.into()])
        .next()
        .map(|row| rows::Subscription {
            anchor: get(&row, 1),
            period: get(&row, 2),
            practice_limit: get_nullable(&row, 3),
            assessments_limit: get_nullable(&row, 4),
            plan_id: get(&row, 5),
        })
}

/// The counter of a session kind.
pub(super) fn counter(
    client: &mut SpiClient<'_>,
    reads: Option<&rows::Tables>,
    kind: &str,
) -> Counter {
    if let Some(found) = reads.and_then(|reads| reads.counter(kind)) {
        return found;
    }
    let row = run_cached(client, COUNTER_SQL, &[TEXT], &[kind.into()])
        .next()
        .expect("tally: a session's kind exists (foreign key)");
    Counter::from_sql(&get::<String>(&row, 1))
}

/// The one row of a transition table, then its subscription and kind. None when the
/// subscription is gone (the row is being deleted by its cascade).
pub(super) fn one_row(
    client: &mut SpiClient<'_>,
    data: &pg_sys::TriggerData,
    transition: Transition,
) -> Option<RowFacts> {
    let reads = rows::Tables::here();
    let row = match reads {
        // Read directly, without the executor (crate::store::heap).
        Some(_) => rows::transition_row(data.tg_relation, transition.table(data))?,
        None => {
            let row = run_cached(client, transition.sql(), &[], &[]).next()?;
            rows::ChangedRow {
                user_id: get(&row, 1),
                kind: get(&row, 2),
                status: get(&row, 3),
                started_at: get(&row, 4),
                learning_plan_id: get_nullable(&row, 5),
                session_id: get(&row, 6),
            }
        }
    };
    let s = subscription(client, reads.as_ref(), &row.user_id)?;
    let counter = counter(client, reads.as_ref(), &row.kind);
    let expired = row.status == "started" && row.started_at <= rows::reservation_cutoff();
    Some(RowFacts {
        user_id: row.user_id,
        status: row.status,
        started_at: row.started_at,
        learning_plan_id: row.learning_plan_id,
        counter,
        anchor: s.anchor,
        period: s.period,
        practice_limit: s.practice_limit,
        assessments_limit: s.assessments_limit,
        session_id: row.session_id,
        plan_id: s.plan_id,
        expired,
    })
}

/// Applies the change of one session row from `old` to `new` (either may be absent:
/// an INSERT has no old row, a DELETE no new one, and a row whose subscription is
/// being deleted has neither). Returns the limit check an inserted row needs and the
/// usage row it raised.
pub(super) fn apply_one(
    client: &mut SpiClient<'_>,
    old: Option<&RowFacts>,
    new: Option<&RowFacts>,
) -> Applied {
    let counted = |row: Option<&RowFacts>| row.filter(|r| r.completed()).map_or(0, |_| 1);
    let mut checks = Vec::new();
    let mut usage = None;
    let mut reservations = None;

    // user_id, kind and started_at never change, so both rows share one usage row.
    if let Some(facts) = new.or(old).filter(|r| r.counter.metered()) {
        let sign = counted(new) - counted(old);
        let (practice, assessments) = facts.counter.deltas(sign);
        let (start, end) = facts.period_bounds();
        let reserves = old.is_none() && new.is_some_and(|n| n.status != "abandoned");
        // Completing a session whose reservation expired takes a slot it no longer
        // held: it is checked like a new session.
        let retakes = old.is_some_and(|o| o.expired) && sign > 0;
        if sign > 0 || reserves {
            let checked = (reserves || retakes) && settings::enforce_limits();
            let limit = facts.limit().filter(|_| checked);
            // The period's started sessions (tally.usage.started_bound): one more for
            // a session inserted started, one fewer for a started one completed.
            let started = if old.is_none() {
                i32::from(facts.status == "started")
            } else {
                -i32::from(old.is_some_and(|o| o.status == "started"))
            };
            let change = rows::UsageChange {
                practice,
                assessments,
                started: Some(started),
                reservations_wanted: limit.is_some(),
            };
            let written = raise(client, &facts.user_id, start, end, &change);
            let (practice_used, assessments_used) = written.used;
            let used = facts.counter.of(practice_used, assessments_used);
            usage = Some(UsageAfter {
                period_start: start,
                period_end: end,
                practice_used,
                assessments_used,
            });
            reservations = written.reservations;
            if let Some(limit) = limit {
                checks.push(LimitCheck {
                    user_id: facts.user_id.clone(),
                    period_start: start,
                    period_end: end,
                    counter: facts.counter,
                    used,
                    done: sign,
                    added: 1,
                    limit,
                    unheld: new.filter(|n| reserves && n.expired).map_or(0, |_| 1),
                    in_progress: written.reservations,
                });
            }
        } else if sign < 0 {
            lower(client, &facts.user_id, start, practice, assessments);
        }
    }

    // Learning plans count completed sessions of any kind. A session that stays
    // completed keeps its plan (only duration_seconds may change), so its two
    // changes cancel out.
    let plan_change = |row: Option<&RowFacts>, sign: i32| {
        row.filter(|r| r.completed())
            .and_then(|r| r.learning_plan_id.map(|id| (r.user_id.clone(), id, sign)))
    };
    let changes = [plan_change(old, -1), plan_change(new, 1)];
    let cancel_out = matches!(&changes, [Some((_, a, _)), Some((_, b, _))] if a == b);
    for (user, plan, delta) in changes.into_iter().flatten().filter(|_| !cancel_out) {
        change_plan(client, user, plan, delta);
    }
    Applied {
        checks,
        usage,
        reservations,
    }
}
