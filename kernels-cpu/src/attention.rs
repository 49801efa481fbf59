//! (attention: being written)
