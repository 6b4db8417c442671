//! Where PostgreSQL calls in: the `entry!` seam every trigger function goes through
//! (its binding checked first, then the database's release, then the body, and a
//! returned error raised with tally's own SQLSTATE).

pub(crate) mod binding;
pub(crate) mod errors;
pub(crate) mod served;
