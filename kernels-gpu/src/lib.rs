//! medmoe GPU kernels (SIMT simulator + PTX); stub until its own issue.
#![deny(missing_docs)]
