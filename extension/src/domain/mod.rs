//! What tally counts, free of PostgreSQL's storage: billing periods and the meters
//! a session kind feeds.

pub(crate) mod meter;
pub(crate) mod period;
pub(crate) mod reservation;
