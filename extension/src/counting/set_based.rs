//! The set-based path: a statement's changes aggregated from its transition tables
//! into one change per (user, period) and per learning plan, then one counter write
//! per group, in key order.

use std::collections::HashMap;

use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::citus::ShardTables;
use crate::counting::limits::LimitCheck;
use crate::domain::meter::{PerSlot, Slot};
use crate::domain::reservation::cutoff_sql;
use crate::pg::settings;
use crate::pg::spi::{
    get, get_nullable, run_cached, run_cached_as_planned, run_cached_for_bulk, INT4_ARRAY,
    INTERVAL_ARRAY, TEXT_ARRAY, TIMESTAMPTZ_ARRAY,
};
use crate::store::sql::upserts;
use crate::store::{Store, UsageChange};

/// What a statement changed, one row per session row (for an UPDATE, the new completed
/// row and the old completed row apart): `done` is the change to completed sessions,
/// `added` the sessions that take a slot and need the limit check (new sessions that
/// are not abandoned; completions of started sessions whose reservation expired),
/// `unheld` new started sessions dated past the reservation timeout (they hold no
/// slot but need one free).
macro_rules! insert_changed {
    () => {
        concat!(
            "SELECT user_id, kind, started_at, learning_plan_id,
       (status = 'completed')::int AS done,
       (status <> 'abandoned')::int AS added,
       (status = 'started' AND started_at <= ",
            cutoff_sql!(),
            ")::int AS unheld
  FROM tally_new"
        )
    };
}

// session_id never changes (sessions_check_update), so it pairs each new row with
// its old one.
macro_rules! update_changed { () => { concat!("SELECT n.user_id, n.kind, n.started_at, n.learning_plan_id, 1 AS done,
       (o.status = 'started' AND o.started_at <= ", cutoff_sql!(), ")::int AS added,
       0 AS unheld
  FROM tally_new n JOIN tally_old o ON o.user_id = n.user_id AND o.session_id = n.session_id
 WHERE n.status = 'completed'
UNION ALL
SELECT user_id, kind, started_at, learning_plan_id, -1, 0, 0 FROM tally_old WHERE status = 'completed'") }; }

macro_rules! delete_changed {
    () => {
        "SELECT user_id, kind, started_at, learning_plan_id, -1 AS done, 0 AS added, 0 AS unheld
  FROM tally_old WHERE status = 'completed'"
    };
}

/// The queries of the set-based path.
pub(super) struct Changes {
    /// The users a statement touched.
    pub(super) users: &'static str,
    /// The change per (user, period), over the transition tables alone: $1..$3 the
    /// users' subscriptions, $4..$5 the kinds, as arrays (data, not tables). Columns
    /// 10 and 11 (the limits) are NULL: the caller has them.
    pub(super) groups: &'static str,
    /// The same where tally's tables are this node's own (one node, or the shards
    /// co-located with the one the trigger fired on): joined with them in one pass,
    /// limits included.
    pub(super) local_groups: &'static str,
    /// local_groups for statements of BULK_ROWS rows or more, planned without
    /// IndexOnlyPlanning and without sorts (crate::pg::spi::run_cached_for_bulk): its
    /// plan is cached apart, made for a transition table that large (hash joins over
    /// tally's tables instead of one index lookup per row, groups hashed instead of
    /// every row sorted).
    pub(super) local_groups_bulk: &'static str,
    /// The change per learning plan.
    pub(super) plans: &'static str,
}

/// A group's changes to each counter (see insert_changed!).
macro_rules! group_sums {
    () => {
        "coalesce(sum(c.done) FILTER (WHERE k.counter = 'practice_sessions'), 0)::int,
       coalesce(sum(c.done) FILTER (WHERE k.counter = 'assessments'), 0)::int,
       coalesce(sum(c.added) FILTER (WHERE k.counter = 'practice_sessions'), 0)::int,
       coalesce(sum(c.added) FILTER (WHERE k.counter = 'assessments'), 0)::int,
       coalesce(sum(c.unheld) FILTER (WHERE k.counter = 'practice_sessions'), 0)::int,
       coalesce(sum(c.unheld) FILTER (WHERE k.counter = 'assessments'), 0)::int"
    };
}

/// The groups query joined with tally's tables, over `changed` (Changes::local_groups),
/// without its order.
macro_rules! local_groups_sql {
    () => {
        concat!(
            r#"SELECT c.user_id, b.period_start, tally.period_end_for(s.period_anchor, p.period, b.period_start),
       "#,
            group_sums!(),
            r#",
       p.practice_sessions_limit, p.assessments_limit
  FROM changed c
  JOIN tally.subscriptions s ON s.user_id = c.user_id
  JOIN tally.plans p ON p.plan_id = s.plan_id
  JOIN tally.session_kinds k ON k.kind = c.kind
 CROSS JOIN LATERAL (SELECT tally.period_start_for(s.period_anchor, p.period, c.started_at) AS period_start) b
 WHERE k.counter <> 'none'
 GROUP BY c.user_id, b.period_start, s.period_anchor, p.period, p.practice_sessions_limit, p.assessments_limit"#
        )
    };
}

macro_rules! changes {
    ($changed:expr) => {
        Changes {
            users: concat!("SELECT DISTINCT user_id FROM (", $changed, ") c ORDER BY 1"),
            groups: concat!(
                "WITH changed AS (",
                $changed,
                r#")
SELECT c.user_id, b.period_start, tally.period_end_for(f.anchor, f.period, b.period_start),
       "#,
                group_sums!(),
                r#",
       NULL::int, NULL::int
  FROM changed c
  JOIN unnest($1::text[], $2::timestamptz[], $3::interval[]) AS f(user_id, anchor, period) ON f.user_id = c.user_id
  JOIN unnest($4::text[], $5::text[]) AS k(kind, counter) ON k.kind = c.kind
 CROSS JOIN LATERAL (SELECT tally.period_start_for(f.anchor, f.period, c.started_at) AS period_start) b
 WHERE k.counter <> 'none'
 GROUP BY c.user_id, b.period_start, f.anchor, f.period
 ORDER BY 1, 2"#
            ),
            local_groups: concat!(
                "WITH changed AS (",
                $changed,
                ")\n",
                local_groups_sql!(),
                "\n ORDER BY 1, 2"
            ),
            local_groups_bulk: concat!(
                "WITH changed AS (",
                $changed,
                "), grouped AS MATERIALIZED (\n",
                local_groups_sql!(),
                ")\nSELECT * FROM grouped ORDER BY 1, 2"
            ),
            plans: concat!(
                "WITH changed AS (",
                $changed,
                ")
SELECT user_id, learning_plan_id, sum(done)::int
  FROM changed
 WHERE learning_plan_id IS NOT NULL
 GROUP BY 1, 2
HAVING sum(done) <> 0
 ORDER BY 1, 2"
            ),
        }
    };
}

pub(super) const INSERTED: Changes = changes!(insert_changed!());
pub(super) const UPDATED: Changes = changes!(update_changed!());
pub(super) const DELETED: Changes = changes!(delete_changed!());

pub(super) const KINDS_SQL: &str =
    "SELECT array_agg(kind), array_agg(counter) FROM tally.session_kinds";

/// Statements changing this many rows or more are counted with plans made for bulk
/// loads (Changes::local_groups_bulk).
pub(super) const BULK_ROWS: i64 = 10_000;

/// The set-based path: the statement's changes aggregated per (user, period) and per
/// learning plan from its transition tables alone, then one routed counter write per
/// group, in key order (the order every writer takes these row locks in). Returns
/// the limit checks the groups need.
pub(super) fn apply_many(
    store: &mut Store,
    client: &mut SpiClient<'_>,
    changes: &Changes,
    rows: i64,
) -> Vec<LimitCheck> {
    let groups: Vec<Group> = if ShardTables::all_local() && rows >= BULK_ROWS {
        run_cached_for_bulk(client, changes.local_groups_bulk)
            .map(Group::from_row)
            .collect()
    } else if ShardTables::all_local() {
        run_cached(client, changes.local_groups, &[], &[])
            .map(Group::from_row)
            .collect()
    } else {
        groups_by_arrays(store, client, changes)
    };
    let plans: Vec<(String, pgrx::Uuid, i32)> = run_cached(client, changes.plans, &[], &[])
        .map(|row| (get(&row, 1), get(&row, 2), get(&row, 3)))
        .collect();

    // One statement for all the raises when they are all this statement writes (an
    // INSERT or COPY; a DELETE only lowers): its rows are then locked in the same key
    // order as group by group.
    let batched = ShardTables::all_local()
        && groups.iter().filter(|g| g.raises()).count() > 1
        && groups.iter().all(|g| g.raises() || !g.lowers());
    let mut raised = if batched {
        raise_many(client, groups.iter().filter(|g| g.raises()))
    } else {
        HashMap::new()
    };
    let enforce = settings::enforce_limits();
    let mut checks = Vec::new();
    for group in groups {
        if group.raises() {
            let used =
                match raised.remove(&(group.user_id.clone(), group.period_start.into_inner())) {
                    Some(used) => used,
                    None => {
                        let change = UsageChange {
                            used: group.done,
                            started: None,
                            reservations_wanted: false,
                        };
                        store
                            .raise(
                                client,
                                &group.user_id,
                                group.period_start,
                                group.period_end,
                                &change,
                            )
                            .used
                    }
                };
            for slot in Slot::ALL {
                let added = group.added[slot];
                if let (true, Some(limit)) = (enforce && added > 0, group.limits[slot]) {
                    checks.push(LimitCheck {
                        user_id: group.user_id.clone(),
                        period_start: group.period_start,
                        period_end: group.period_end,
                        slot,
                        used: used[slot],
                        done: group.done[slot],
                        added,
                        limit,
                        unheld: group.unheld[slot],
                        in_progress: None,
                    });
                }
            }
        } else if group.lowers() {
            store.lower(client, &group.user_id, group.period_start, group.done);
        }
    }
    for (user, plan, delta) in plans {
        store.change_plan(client, user, plan, delta);
    }
    checks
}

/// The groups of a statement from its transition tables alone, the users'
/// subscriptions and the kinds passed in as arrays (where tally's tables are
/// distributed).
pub(super) fn groups_by_arrays(
    store: &mut Store,
    client: &mut SpiClient<'_>,
    changes: &Changes,
) -> Vec<Group> {
    let users: Vec<String> = run_cached(client, changes.users, &[], &[])
        .map(|row| get(&row, 1))
        .collect();
    // Users whose subscription is gone (a cascade from its deletion) count nowhere.
    // Routed statements: tally's tables are not this node's own here.
    let mut subscriptions = HashMap::new();
    for user in users {
        if let Some(found) = store.subscription(client, &user) {
            subscriptions.insert(user, found);
        }
    }
    let (kinds, counters): (Vec<String>, Vec<String>) = {
        let row = run_cached(client, KINDS_SQL, &[], &[])
            .next()
            .expect("an aggregate returns a row");
        (
            get_nullable(&row, 1).unwrap_or_default(),
            get_nullable(&row, 2).unwrap_or_default(),
        )
    };
    let (user_ids, anchors, periods) = subscriptions.iter().fold(
        (Vec::new(), Vec::new(), Vec::new()),
        |(mut users, mut anchors, mut periods), (user, s)| {
            users.push(user.clone());
            anchors.push(s.anchor);
            periods.push(s.period);
            (users, anchors, periods)
        },
    );
    run_cached(
        client,
        changes.groups,
        &[
            TEXT_ARRAY,
            TIMESTAMPTZ_ARRAY,
            INTERVAL_ARRAY,
            TEXT_ARRAY,
            TEXT_ARRAY,
        ],
        &[
            user_ids.into(),
            anchors.into(),
            periods.into(),
            kinds.into(),
            counters.into(),
        ],
    )
    .map(|row| {
        let mut group = Group::from_row(row);
        let s = &subscriptions[&group.user_id];
        group.limits = s.limits;
        group
    })
    .collect()
}

/// The change of one statement to one user's usage in one period.
pub(super) struct Group {
    pub(super) user_id: String,
    pub(super) period_start: TimestampWithTimeZone,
    pub(super) period_end: TimestampWithTimeZone,
    /// Per meter slot, here and below (see insert_changed!).
    pub(super) done: PerSlot<i32>,
    pub(super) added: PerSlot<i32>,
    pub(super) unheld: PerSlot<i32>,
    /// The plan's limits.
    pub(super) limits: PerSlot<Option<i32>>,
}

impl Group {
    /// A row of `Changes::groups` or `Changes::local_groups`.
    fn from_row(row: pgrx::spi::SpiHeapTupleData<'_>) -> Group {
        Group {
            user_id: get(&row, 1),
            period_start: get(&row, 2),
            period_end: get(&row, 3),
            done: PerSlot::new([get(&row, 4), get(&row, 5)]),
            added: PerSlot::new([get(&row, 6), get(&row, 7)]),
            unheld: PerSlot::new([get(&row, 8), get(&row, 9)]),
            limits: PerSlot::new([get_nullable(&row, 10), get_nullable(&row, 11)]),
        }
    }

    /// Adds to its usage row (completions, or sessions that take a slot).
    fn raises(&self) -> bool {
        self.done.any(|n| *n > 0) || self.added.any(|n| *n > 0)
    }

    /// Takes completions away from its usage row.
    fn lowers(&self) -> bool {
        !self.raises() && self.done.any(|n| *n < 0)
    }
}

/// raise_one_sql! for every group in one statement. Returns every slot after the
/// write by (user, period start).
pub(super) fn raise_many<'a>(
    client: &mut SpiClient<'_>,
    groups: impl Iterator<Item = &'a Group>,
) -> HashMap<(String, i64), PerSlot<i32>> {
    let (mut users, mut starts, mut ends, mut practice, mut assessments) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for group in groups {
        users.push(group.user_id.clone());
        starts.push(group.period_start);
        ends.push(group.period_end);
        practice.push(group.done[Slot::PRACTICE_SESSIONS]);
        assessments.push(group.done[Slot::ASSESSMENTS]);
    }
    run_cached_as_planned(
        client,
        upserts().many,
        &[
            TEXT_ARRAY,
            TIMESTAMPTZ_ARRAY,
            TIMESTAMPTZ_ARRAY,
            INT4_ARRAY,
            INT4_ARRAY,
        ],
        &[
            users.into(),
            starts.into(),
            ends.into(),
            practice.into(),
            assessments.into(),
        ],
    )
    .map(|row| {
        let start: TimestampWithTimeZone = get(&row, 2);
        (
            (get(&row, 1), start.into_inner()),
            PerSlot::new([get(&row, 3), get(&row, 4)]),
        )
    })
    .collect()
}
