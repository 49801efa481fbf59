//! (embedding: being written)
