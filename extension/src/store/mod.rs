//! The data seam: what counting, limits and the usage document read and write (a
//! session row a statement changed, a user's subscription and plan, what a kind
//! feeds, live reservations, the counter write), asked of `Store`, which answers by
//! key through PostgreSQL's access methods (`rows` on `heap`, plans and kinds from
//! `catalog_cache`) where that means the same as SQL, and through the SQL backend
//! (`sql`) everywhere else. The SQL backend is the reference: with `tally.fast_path`
//! off every answer comes from it, and `make test-spi` runs the correctness suites
//! that way.

pub(crate) mod catalog_cache;
pub(crate) mod heap;
pub(crate) mod rows;
pub(crate) mod sql;

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::domain::meter::{Feeds, PerSlot};
use crate::domain::reservation::reservation_cutoff;

pub(crate) use rows::{ChangedRow, Subscription, UsageChange, UsageWritten};

/// The backend of one trigger or function call, picked once when it is opened (after
/// `citus::ShardTables::enter`, which says whose tables are this node's own). The
/// by-key readers are made when first needed, each with a statement snapshot taken
/// then: the reservation count's after the statement's usage row locks.
pub(crate) struct Store {
    by_key: bool,
    tables: Option<Option<rows::Tables>>,
    reservations: Option<Option<(rows::Reservations, TimestampWithTimeZone)>>,
}

impl Store {
    pub(crate) fn open() -> Store {
        Store {
            by_key: heap::serves_here(),
            tables: None,
            reservations: None,
        }
    }

    fn tables(&mut self) -> Option<&rows::Tables> {
        let by_key = self.by_key;
        self.tables
            .get_or_insert_with(|| by_key.then(rows::Tables::here).flatten())
            .as_ref()
    }

    /// The one row of the trigger's new (`new`) or old transition table.
    pub(crate) fn changed_row(
        &mut self,
        client: &mut SpiClient<'_>,
        data: &pg_sys::TriggerData,
        new: bool,
    ) -> Option<ChangedRow> {
        if self.by_key {
            let table = if new {
                data.tg_newtable
            } else {
                data.tg_oldtable
            };
            rows::transition_row(data.tg_relation, table)
        } else {
            sql::changed_row(client, new)
        }
    }

    /// The subscription of `user_id` and its plan; None when there is none (its
    /// deletion cascades to the user's rows).
    pub(crate) fn subscription(
        &mut self,
        client: &mut SpiClient<'_>,
        user_id: &str,
    ) -> Option<Subscription> {
        if let Some(found) = self.tables().and_then(|t| t.subscription(user_id)) {
            return found;
        }
        sql::subscription(client, user_id)
    }

    /// The meter slots session kind `kind` feeds.
    pub(crate) fn feeds(&mut self, client: &mut SpiClient<'_>, kind: &str) -> Feeds {
        if let Some(found) = self.tables().and_then(|t| t.feeds(kind)) {
            return found;
        }
        sql::feeds(client, kind)
    }

    /// Whether `user_id` has learning plans; None when not known by key.
    pub(crate) fn has_learning_plans(&mut self, user_id: &str) -> Option<bool> {
        self.tables().and_then(|t| t.has_learning_plans(user_id))
    }

    /// Adds to a usage row, creating it if needed; the write takes the row lock that
    /// serializes limit checks. An existing row is updated by key without the executor
    /// where that means the same (`rows::add_to_usage`), else the upsert runs.
    /// Returns every slot after the write, and the reservations when known.
    pub(crate) fn raise(
        &mut self,
        client: &mut SpiClient<'_>,
        user_id: &str,
        start: TimestampWithTimeZone,
        end: TimestampWithTimeZone,
        change: &UsageChange,
    ) -> UsageWritten {
        if self.by_key {
            if let Some(written) = rows::add_to_usage(user_id, start, end, change) {
                return written;
            }
        }
        sql::raise(client, user_id, start, end, change)
    }

    /// Subtracts from a usage row, which exists: the sessions it counted did.
    pub(crate) fn lower(
        &mut self,
        client: &mut SpiClient<'_>,
        user_id: &str,
        start: TimestampWithTimeZone,
        change: PerSlot<i32>,
    ) {
        sql::lower(client, user_id, start, change);
    }

    /// Adds `delta` to a learning plan's completed sessions.
    pub(crate) fn change_plan(
        &mut self,
        client: &mut SpiClient<'_>,
        user_id: String,
        plan: pgrx::Uuid,
        delta: i32,
    ) {
        sql::change_plan(client, user_id, plan, delta);
    }

    /// The reservations in one (user, period), per slot.
    /// Call after the statement's counter writes: the count sees every session
    /// committed before their row locks were granted.
    pub(crate) fn reservations(
        &mut self,
        client: &mut SpiClient<'_>,
        user_id: &str,
        start: TimestampWithTimeZone,
        end: TimestampWithTimeZone,
    ) -> PerSlot<i32> {
        let by_key = self.by_key;
        let readers = self.reservations.get_or_insert_with(|| {
            by_key
                .then(rows::Reservations::here)
                .flatten()
                .map(|r| (r, reservation_cutoff()))
        });
        match readers {
            Some((reservations, cutoff)) => reservations.count(user_id, start, end, *cutoff),
            None => sql::reservations(client, user_id, start, end),
        }
    }
}

/// Registers the one relcache callback of the data seam, when the library is loaded
/// (`_PG_init`): it empties what is kept by table, the tables `heap` resolved and,
/// with them, the plans and kinds of `catalog_cache`. Registered once, before anything
/// is kept, so no invalidation goes unseen.
pub(crate) fn watch_invalidations() {
    // SAFETY: registers, once per process, a callback that only empties caches.
    unsafe { pg_sys::CacheRegisterRelcacheCallback(Some(forget), pg_sys::Datum::from(0)) };
}

#[pg_guard]
unsafe extern "C-unwind" fn forget(_arg: pg_sys::Datum, relation: pg_sys::Oid) {
    if heap::forget_resolved(relation) {
        catalog_cache::forget();
    }
}

/// Whether tally.usage here keeps `started_bound` (one node, not a shard): a write to
/// it through SQL must then make the bound unknown.
pub(crate) fn usage_keeps_started_bound() -> bool {
    rows::usage_keeps_started_bound()
}
