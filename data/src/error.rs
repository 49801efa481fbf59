//! The crate's error type: every variant names the file (and line or key) it is about.

use std::path::PathBuf;

/// Errors of the data crate.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// An operating-system error on a file or directory.
    #[error("{}: {cause}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// A line of a JSONL file that is not valid UTF-8, not valid JSON, or not the expected record.
    #[error("{path}:{line}: {message}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A whole-file JSON document (manifest, tokenizer.json, PubMedQA file) that does not parse or validate.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong (with the key or line where known).
        message: String,
    },
    /// A pack whose files disagree with each other (index vs tokens vs metadata).
    #[error("{path}: pack is inconsistent: {message}")]
    Pack {
        /// The shard file found at fault.
        path: PathBuf,
        /// What disagrees.
        message: String,
    },
    /// A tokenizer that could not be trained, loaded or applied.
    #[error("tokenizer{}: {message}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Tokenizer {
        /// The tokenizer file, when there is one.
        path: Option<PathBuf>,
        /// What went wrong.
        message: String,
    },
    /// A chat template that does not compile or render.
    #[error("chat template{}: {message}", source_name.as_ref().map(|p| format!(" ({p})")).unwrap_or_default())]
    Template {
        /// Where the template came from (a file path), if not the built-in one.
        source_name: Option<String>,
        /// The template engine's message, with line numbers.
        message: String,
    },
    /// An invalid setting or argument (sizes, weights, seeds).
    #[error("invalid {what}: {message}")]
    Config {
        /// The setting.
        what: String,
        /// Why it is rejected.
        message: String,
    },
    /// A generated artefact failed its own check (e.g. eval text overlapping training text).
    #[error("check failed: {0}")]
    Check(String),
}

/// `Result` with [`DataError`].
pub type Result<T> = std::result::Result<T, DataError>;

impl DataError {
    /// An [`DataError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        DataError::Io { path: path.into(), cause }
    }

    /// A [`DataError::Config`].
    pub fn config(what: impl Into<String>, message: impl Into<String>) -> Self {
        DataError::Config { what: what.into(), message: message.into() }
    }

    /// A [`DataError::File`].
    pub fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        DataError::File { path: path.into(), message: message.into() }
    }

    /// A [`DataError::Pack`].
    pub fn pack(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        DataError::Pack { path: path.into(), message: message.into() }
    }
}
