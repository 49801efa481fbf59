//! medmoe model.
#![deny(missing_docs)]
