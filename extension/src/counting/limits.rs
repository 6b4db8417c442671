//! Plan limits: after the counter write of a statement, each (user, period, meter
//! slot) it added metered sessions to is checked against the plan's limit, reservations
//! of started sessions included, and the statement is refused whole with TL001.

use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::domain::meter::{PerSlot, Slot};
use crate::entry::errors::{TallyCode, TallyError, TallyResult};
use crate::store::Store;

/// A (user, period, meter slot) that this statement added metered sessions to, under
/// a limit.
pub(crate) struct LimitCheck {
    pub user_id: String,
    pub period_start: TimestampWithTimeZone,
    pub period_end: TimestampWithTimeZone,
    pub slot: Slot,
    /// Completed sessions in the period after this statement.
    pub used: i32,
    /// How many of those this statement completed.
    pub done: i32,
    /// Sessions this statement adds to the limit: new started or completed ones,
    /// and completions whose reservation had expired.
    pub added: i32,
    pub limit: i32,
    /// New started sessions whose reservation expired at birth: they hold no slot
    /// (not in the reservation count) but each needs one free when inserted.
    pub unheld: i32,
    /// The reservations in the period per slot, when the counter write knew them
    /// under the row lock (crate::store::rows::add_to_usage); counted here otherwise.
    pub in_progress: Option<PerSlot<i32>>,
}

/// Refuses the statement if any (user, period, slot) it added to is now past its
/// limit once reservations are counted. For a single check, returns the reservations
/// it counted in that user's period, per slot.
pub(crate) fn check_limits(
    store: &mut Store,
    client: &mut SpiClient<'_>,
    checks: &[LimitCheck],
) -> TallyResult<Option<PerSlot<i32>>> {
    let mut every_slot = None;
    let mut in_progress = Vec::with_capacity(checks.len());
    for check in checks {
        // Known when the counter write counted them under its row lock; else counted
        // now (on Citus, one routed count per check, each reading one user's shard).
        let held = match check.in_progress {
            Some(known) => known,
            None => {
                store.reservations(client, &check.user_id, check.period_start, check.period_end)
            }
        };
        if checks.len() == 1 {
            every_slot = Some(held);
        }
        in_progress.push(held[check.slot]);
    }
    for (check, in_progress) in checks.iter().zip(in_progress) {
        // Checked one by one, a started session whose reservation expired at birth
        // needs one free slot but holds none after it, so any number of them
        // need just the one.
        if check.used + in_progress + check.unheld.min(1) > check.limit {
            return Err(quota_exceeded(check, in_progress));
        }
    }
    Ok(every_slot)
}

fn quota_exceeded(check: &LimitCheck, in_progress: i32) -> TallyError {
    // Report the state before this statement: the statement is rejected whole.
    let used_before = check.used - check.done;
    let in_progress_before = in_progress - (check.added - check.done - check.unheld);
    TallyError::new(
        TallyCode::QuotaExceeded,
        format!(
            "quota exceeded: user \"{}\" has used {} of {} {} in the period ending {}",
            check.user_id,
            used_before,
            check.limit,
            check.slot.meter(),
            crate::format_timestamp(check.period_end)
        ),
    )
    // key=value pairs for clients to parse; user_id last because it may contain spaces
    .detail(format!(
        "counter={} used={} in_progress={} limit={} adding={} period_start={} period_end={} user_id={}",
        check.slot.meter(),
        used_before,
        in_progress_before,
        check.limit,
        check.added,
        crate::format_timestamp(check.period_start),
        crate::format_timestamp(check.period_end),
        check.user_id
    ))
    .hint(
        "Wait for the next billing period or move the subscription to a plan with a higher limit. \
         A superuser loading historical data can SET tally.enforce_limits = off.",
    )
}
