//! (adamw: being written)
