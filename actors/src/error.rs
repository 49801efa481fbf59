//! Typed errors of the training engine.

use std::path::PathBuf;

/// Everything that can go wrong while running a phase.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A model-level failure (loading, shapes, forward).
    #[error(transparent)]
    Model(#[from] model::ModelError),
    /// An autograd-level failure (e.g. a device this build or machine cannot run).
    #[error(transparent)]
    Autograd(#[from] autograd::AutogradError),
    /// A data-level failure (world, tokenizer, pack, sampler).
    #[error(transparent)]
    Data(#[from] data::error::DataError),
    /// Writing or resuming the metrics log failed.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// Reading or writing a file failed.
    #[error("{}: {cause}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        cause: std::io::Error,
    },
    /// A phase or run configuration is invalid.
    #[error("config {what}: {msg}")]
    Config {
        /// Which setting or file.
        what: String,
        /// What is wrong with it.
        msg: String,
    },
    /// A checkpoint is missing, incomplete or does not fit the run.
    #[error("checkpoint {path}: {msg}")]
    Checkpoint {
        /// The checkpoint directory.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// An actor stopped and could not be restarted, or a message was lost.
    #[error("actor {actor}: {msg}")]
    Actor {
        /// Which actor.
        actor: &'static str,
        /// What happened.
        msg: String,
    },
    /// Another run holds the run directory's lock.
    #[error("run directory {} is in use by {holder}: wait for that run to finish or stop it", dir.display())]
    Locked {
        /// The run directory.
        dir: PathBuf,
        /// Who holds it ([`crate::lock::Holder`] in words).
        holder: String,
    },
    /// Training diverged beyond what the guards handle.
    #[error("training: {0}")]
    Training(String),
}

impl From<atomicio::Error> for EngineError {
    fn from(e: atomicio::Error) -> Self {
        EngineError::Io { path: e.path, cause: e.cause }
    }
}

/// Result with [`EngineError`].
pub type Result<T> = std::result::Result<T, EngineError>;

impl EngineError {
    /// A config error.
    pub fn config(what: impl Into<String>, msg: impl Into<String>) -> Self {
        EngineError::Config { what: what.into(), msg: msg.into() }
    }

    /// An IO error for `path`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |cause| EngineError::Io { path, cause }
    }
}
