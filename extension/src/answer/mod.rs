//! What tally answers: `tally.record_session` and the usage document, built from
//! what the counting of the same statement already read where it can.

pub(crate) mod document;
pub(crate) mod last_insert;
pub(crate) mod record;
