//! (rmsnorm: being written)
