//! Marks the counter writes that tally itself makes.
//!
//! The guard triggers on `tally.usage` and `tally.learning_plans.completed_sessions`
//! reject every write unless it comes from a statement that tally itself runs. The
//! mark lives in backend memory, out of reach of SQL, so no role (superusers
//! included) can claim it.
//!
//! It is tied to the statement, not to the time tally's code is running: tally's
//! function records the trigger depth it runs at, and a guard accepts a write only
//! when it fires exactly one level deeper, that is for a statement tally's function
//! issued itself. Anything that runs further down while tally's statement executes
//! (a trigger someone added to tally.learning_plans, a cascade, a function called
//! by such a trigger) fires the guard at a deeper level and is refused.

use std::cell::RefCell;

use pgrx::pg_sys;

thread_local! {
    /// Trigger depths of tally's functions now running, innermost last.
    static DEPTHS: RefCell<Vec<i32>> = const { RefCell::new(Vec::new()) };
}

/// PostgreSQL's trigger nesting depth (`pg_trigger_depth()`): 0 outside any
/// trigger, 1 inside a trigger fired by a top-level statement, and so on.
fn trigger_depth() -> i32 {
    // SAFETY: pg_trigger_depth takes no arguments and reads a backend-local counter.
    unsafe { pgrx::direct_function_call::<i32>(pg_sys::pg_trigger_depth, &[]) }
        .expect("pg_trigger_depth returns a value")
}

/// While alive, the statements this function of tally runs may write counters.
#[must_use]
pub struct InternalWrite(());

impl InternalWrite {
    pub fn begin() -> Self {
        let depth = trigger_depth();
        DEPTHS.with(|d| d.borrow_mut().push(depth));
        InternalWrite(())
    }
}

impl Drop for InternalWrite {
    fn drop(&mut self) {
        DEPTHS.with(|d| d.borrow_mut().pop());
    }
}

/// True when the guard trigger calling this fires for a statement that the
/// innermost running function of tally issued itself.
pub fn active() -> bool {
    let guard_depth = trigger_depth();
    DEPTHS.with(|d| d.borrow().last().is_some_and(|&own| guard_depth == own + 1))
}

/// Clears the mark when a transaction aborts, in case an error skipped a drop.
pub(crate) fn reset() {
    DEPTHS.with(|d| d.borrow_mut().clear());
}
