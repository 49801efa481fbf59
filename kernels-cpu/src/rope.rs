//! (rope: being written)
