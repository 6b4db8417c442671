//! The single-row path (the API's and every ORM's): the changed row read with its
//! subscription and kind from the data seam (crate::store::Store), and applied in
//! Rust.

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::counting::limits::LimitCheck;
use crate::domain::meter::{Feeds, PerSlot, Slot};
use crate::domain::reservation::reservation_cutoff;
use crate::pg::settings;
use crate::store::{Store, UsageChange};

/// The transition table a single-row path reads.
#[derive(Clone, Copy)]
pub(super) enum Transition {
    New,
    Old,
}

/// What counting needs to know of one session row.
pub(super) struct RowFacts {
    pub(super) user_id: String,
    pub(super) status: String,
    pub(super) started_at: TimestampWithTimeZone,
    pub(super) learning_plan_id: Option<pgrx::Uuid>,
    /// The meter slots its kind feeds.
    pub(super) feeds: Feeds,
    pub(super) anchor: TimestampWithTimeZone,
    pub(super) period: Interval,
    /// Its plan's limit of each slot.
    pub(super) limits: PerSlot<Option<i32>>,
    pub(super) session_id: pgrx::Uuid,
    pub(super) plan_id: String,
    /// A started session whose reservation has expired (by tally.reservation_timeout).
    pub(super) expired: bool,
}

/// The usage row of a session's period after an upsert.
pub(super) struct UsageAfter {
    pub(super) period_start: TimestampWithTimeZone,
    pub(super) period_end: TimestampWithTimeZone,
    pub(super) used: PerSlot<i32>,
}

/// What applying one row did: the limit check it needs, the usage row it raised, and
/// the reservations in that row's period when they were known under its lock.
pub(super) struct Applied {
    pub(super) checks: Vec<LimitCheck>,
    pub(super) usage: Option<UsageAfter>,
    pub(super) reservations: Option<PerSlot<i32>>,
}

impl RowFacts {
    fn completed(&self) -> bool {
        self.status == "completed"
    }

    fn period_bounds(&self) -> (TimestampWithTimeZone, TimestampWithTimeZone) {
        crate::domain::period::period_bounds(self.anchor, &self.period, self.started_at)
    }
}

/// The one row of a transition table, then its subscription and kind. None when the
/// subscription is gone (the row is being deleted by its cascade).
pub(super) fn one_row(
    store: &mut Store,
    client: &mut SpiClient<'_>,
    data: &pg_sys::TriggerData,
    transition: Transition,
) -> Option<RowFacts> {
    let row = store.changed_row(client, data, matches!(transition, Transition::New))?;
    let s = store.subscription(client, &row.user_id)?;
    let feeds = store.feeds(client, &row.kind);
    let expired = row.status == "started" && row.started_at <= reservation_cutoff();
    Some(RowFacts {
        user_id: row.user_id,
        status: row.status,
        started_at: row.started_at,
        learning_plan_id: row.learning_plan_id,
        feeds,
        anchor: s.anchor,
        period: s.period,
        limits: s.limits,
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
    store: &mut Store,
    client: &mut SpiClient<'_>,
    old: Option<&RowFacts>,
    new: Option<&RowFacts>,
) -> Applied {
    let counted = |row: Option<&RowFacts>| row.filter(|r| r.completed()).map_or(0, |_| 1);
    let mut checks = Vec::new();
    let mut usage = None;
    let mut reservations = None;

    // user_id, kind and started_at never change, so both rows share one usage row.
    if let Some(facts) = new.or(old).filter(|r| r.feeds.metered()) {
        let sign = counted(new) - counted(old);
        let deltas = facts.feeds.deltas(sign);
        let (start, end) = facts.period_bounds();
        let reserves = old.is_none() && new.is_some_and(|n| n.status != "abandoned");
        // Completing a session whose reservation expired takes a slot it no longer
        // held: it is checked like a new session.
        let retakes = old.is_some_and(|o| o.expired) && sign > 0;
        if sign > 0 || reserves {
            let checked = (reserves || retakes) && settings::enforce_limits();
            // The limit of a slot the row feeds, when it is checked.
            let limit = |slot: Slot| facts.limits[slot].filter(|_| checked);
            // The period's started sessions (tally.usage.started_bound): one more for
            // a session inserted started, one fewer for a started one completed.
            let started = if old.is_none() {
                i32::from(facts.status == "started")
            } else {
                -i32::from(old.is_some_and(|o| o.status == "started"))
            };
            let change = UsageChange {
                used: deltas,
                started: Some(started),
                reservations_wanted: facts.feeds.slots().any(|slot| limit(slot).is_some()),
            };
            let written = store.raise(client, &facts.user_id, start, end, &change);
            usage = Some(UsageAfter {
                period_start: start,
                period_end: end,
                used: written.used,
            });
            reservations = written.reservations;
            for (slot, limit) in facts.feeds.slots().filter_map(|s| Some((s, limit(s)?))) {
                checks.push(LimitCheck {
                    user_id: facts.user_id.clone(),
                    period_start: start,
                    period_end: end,
                    slot,
                    used: written.used[slot],
                    done: sign,
                    added: 1,
                    limit,
                    unheld: new.filter(|n| reserves && n.expired).map_or(0, |_| 1),
                    in_progress: written.reservations,
                });
            }
        } else if sign < 0 {
            store.lower(client, &facts.user_id, start, deltas);
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
        store.change_plan(client, user, plan, delta);
    }
    Applied {
        checks,
        usage,
        reservations,
    }
}
