//! Packing: documents -> fixed-length token sequences with document boundaries, stored as
//! memory-mapped shards; a seeded, resumable, domain-weighted sampler reads them back.
//! See [`format`] for the files.

pub mod format;
mod reader;
mod sampler;
mod writer;

pub use reader::{PackedDataset, SequenceRef, Shard};
pub use sampler::{batch_of, Mix, PackedBatch, PoolCursor, Sampler, SamplerConfig, SamplerState};
pub use writer::{pack_documents, PackConfig};
