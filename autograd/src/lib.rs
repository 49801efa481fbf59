//! medmoe Tensor, devices, tape, ops.
#![deny(missing_docs)]
