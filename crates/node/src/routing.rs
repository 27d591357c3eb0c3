//! Who gets a record: the destination rule, the live topic map and the replay window
//! that resumes read from.

pub(crate) mod resume;
pub(crate) mod router;
pub(crate) mod rule;
pub(crate) mod window;
