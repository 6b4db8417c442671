//! How tally's own SPI statements are planned: as index lookups, whatever the
//! statistics said when their cached plans were made.

use std::ffi::CStr;

use crate::pg::guc::SettingsLevel;

/// How tally's own statements are planned while alive, undone at drop (or by
/// PostgreSQL at abort): `enable_seqscan = off`, and with `generic`,
/// `plan_cache_mode = force_generic_plan`.
///
/// They are key lookups in indexes, their plans cached for the life of the
/// connection. A plan made while the tables are empty (a fresh install, a test) would
/// otherwise be a sequential scan kept as they grow. And the plan cache would
/// otherwise weigh a custom plan against the generic one at every execution, and plan
/// each execution anew whenever it prefers custom; `generic` is only for statements
/// on PostgreSQL tables of this node (Citus plans a distributed query from the
/// parameters' values).
///
/// The settings are made when the first statement that needs them runs
/// (`IndexOnlyPlanning::apply`, called by crate::pg::spi::run_cached): a counting call
/// whose only statement is the counter upsert, which scans nothing, makes none.
pub(crate) struct IndexOnlyPlanning(());

thread_local! {
    /// The plannings alive, innermost last: (generic, the GUC nest level once applied).
    static PLANNING: std::cell::RefCell<Vec<(bool, Option<SettingsLevel>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

impl IndexOnlyPlanning {
    pub(crate) fn begin(generic: bool) -> Self {
        PLANNING.with(|p| p.borrow_mut().push((generic, None)));
        IndexOnlyPlanning(())
    }

    /// Makes the innermost planning's settings, once.
    pub(crate) fn apply() {
        let pending = PLANNING.with(|p| match p.borrow().last() {
            Some((generic, None)) => Some(*generic),
            _ => None,
        });
        let Some(generic) = pending else { return };
        let settings: &[(&CStr, &CStr)] = if generic {
            &[
                (c"enable_seqscan", c"off"),
                (c"plan_cache_mode", c"force_generic_plan"),
            ]
        } else {
            &[(c"enable_seqscan", c"off")]
        };
        let level = SettingsLevel::open(settings);
        PLANNING.with(|p| {
            if let Some(last) = p.borrow_mut().last_mut() {
                last.1 = Some(level);
            }
        });
    }

    /// Forgets every planning (the transaction aborted; PostgreSQL undid the settings).
    pub(crate) fn reset() {
        let plannings = PLANNING.with(|p| std::mem::take(&mut *p.borrow_mut()));
        for level in plannings.into_iter().filter_map(|(_, level)| level) {
            level.abandon();
        }
    }
}

impl Drop for IndexOnlyPlanning {
    fn drop(&mut self) {
        // Closes the nest level apply() opened, if any (unless unwinding from an
        // error: the (sub)transaction's abort closes it).
        let popped = PLANNING.with(|p| p.borrow_mut().pop());
        drop(popped);
    }
}
