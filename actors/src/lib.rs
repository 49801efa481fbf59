//! medmoe training engine and actor supervisor.
//!
//! Pure parts (schedules, AutoClip, breaker policies, evaluation, metrics writers, checkpoint
//! format) are plain functions and structs; the actix actors (supervisor, data loader,
//! trainer, checkpointer) wrap them. Architecture invariant: only this crate and the cli spawn
//! threads for orchestration.
#![deny(missing_docs)]

pub mod autoclip;
mod baseline;
pub mod batches;
pub mod bias_balance;
pub mod breakers;
pub mod checkpoint;
pub mod error;
pub mod eval;
pub mod eval_job;
mod eval_stage;
pub mod evaluator;
pub mod faults;
pub mod harness;
pub mod hf_base;
pub mod importance_pass;
pub mod lock;
pub mod manifest;
pub mod metrics;
pub mod metrics_actor;
mod p4_export;
pub mod p4_stage;
pub mod p4_state;
pub mod phase;
pub mod preference_data;
pub mod qat_eval;
pub mod qat_ledger;
pub mod qat_mask;
pub mod qat_policy;
pub mod qat_training;
pub mod run_config;
pub mod run_corpus;
pub mod rundir;
pub mod schedule;
pub mod sft_data;
pub mod ship_mask;
pub mod summary;
pub mod supervisor;
pub mod teacher_cache;
pub mod trainer;
pub mod verify;

pub use error::{EngineError, Result};
pub mod stages;
