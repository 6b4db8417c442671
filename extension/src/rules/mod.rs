//! The rules around the counters: what a session row may be and become, the guards
//! that keep derived data out of reach, re-bucketing when periods move, and
//! verify/repair.

pub(crate) mod guards;
pub(crate) mod rebucket;
pub(crate) mod repair;
pub(crate) mod sessions;
