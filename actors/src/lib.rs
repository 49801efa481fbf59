//! medmoe actor supervisor (stub until its own issue).
#![deny(missing_docs)]
