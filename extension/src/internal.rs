//! Marks the counter writes that tally itself makes.
//!
//! The guard triggers on `tally.usage` and `tally.learning_plans.completed_sessions`
//! reject every write unless this backend is inside one of tally's own writes.
//! The mark lives in backend memory, out of reach of SQL, so no role (superusers
//! included) can claim it.

use std::cell::Cell;

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// While alive, counter writes made by this backend are tally's own.
#[must_use]
pub struct InternalWrite(());

impl InternalWrite {
    pub fn begin() -> Self {
        DEPTH.with(|d| d.set(d.get() + 1));
        InternalWrite(())
    }
}

impl Drop for InternalWrite {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

pub fn active() -> bool {
    DEPTH.with(|d| d.get() > 0)
}

/// Clears the mark when a transaction aborts, in case an error skipped a drop.
pub(crate) fn reset() {
    DEPTH.with(|d| d.set(0));
}
