//! The data tally reads and writes by key on the single-row path, through
//! PostgreSQL's access methods rather than SQL, and the plans and kinds kept per
//! connection.

pub(crate) mod catalog_cache;
pub(crate) mod heap;
pub(crate) mod rows;
