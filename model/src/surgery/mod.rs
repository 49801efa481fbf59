//! Dense → MoE surgery: neuron planning (which neurons go to the shared expert and to each
//! routed expert) and the weight assembly of the MoE checkpoint.

pub mod apply;
pub mod kmeans;
pub mod plan;
pub mod stream;
pub mod upcycle;
