//! Statement-level counting: every INSERT, UPDATE and DELETE on `tally.sessions`
//! (COPY, INSERT … SELECT, ON CONFLICT and cascades included) is aggregated from its
//! transition table into one counter write per (user, period) and per learning plan.
//!
//! Limits ride on the same write: the upsert of the usage row takes its row lock, so
//! inserts for one user and period serialize there, and the reservation count that
//! follows runs with a fresh snapshot taken after the lock was granted.
//!
//! Every query reads either a transition table alone or tally's tables alone, never
//! both: on Citus the trigger fires on a shard, where a transition table cannot be
//! joined with a distributed table, and tally's tables are reached by statements
//! routed by `user_id` (scalar parameters) to the co-located shards. The same path
//! runs on one node. A statement that changed exactly one row (the API's case) reads
//! that row and its subscription and applies it in Rust; any other statement
//! aggregates its transition tables into one change per (user, period) and per
//! learning plan first. Both apply the same deltas and the same limit check.

pub(crate) mod limits;
pub(crate) mod set_based;
pub(crate) mod single_row;
pub(crate) mod triggers;
