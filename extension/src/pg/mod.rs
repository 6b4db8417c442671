//! PostgreSQL plumbing shared by the rest: what differs between majors, SPI
//! statements, settings, running as the extension owner, the mark on tally's own
//! writes, and the per-connection build of `tally.sessions`' constraints.

pub(crate) mod expressions;
pub(crate) mod guc;
pub(crate) mod majors;
pub(crate) mod planning;
pub(crate) mod privilege;
pub(crate) mod settings;
pub(crate) mod spi;
pub(crate) mod write_mark;
