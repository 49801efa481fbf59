//! (swiglu: being written)
