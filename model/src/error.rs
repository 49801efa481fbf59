//! Typed errors of the model crate.
//!
//! Every variant that comes from a file names that file, and the tensor or config field where there is one,
//! so a user can find the problem without a debugger.

use std::path::PathBuf;

/// Errors returned by the model crate (config reading, safetensors I/O, model construction).
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// An operating-system I/O error on `path` (missing file, permission, disk full, ...).
    #[error("{}: {cause}", path.display())]
    Io {
        /// The file or directory the operation was about.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },

    /// A config file that is empty, not JSON, or not a JSON object.
    #[error("{}: not valid JSON: {msg}", path.display())]
    ConfigJson {
        /// The config file.
        path: PathBuf,
        /// What is wrong (the JSON parser's message, with line and column where known).
        msg: String,
    },

    /// A config field that is missing, has the wrong type, or an invalid value.
    #[error("{}: field `{field}`: {msg}", path.display())]
    ConfigField {
        /// The config file.
        path: PathBuf,
        /// The HF field name (dotted for nested fields, e.g. `rope_parameters.rope_theta`).
        field: String,
        /// What is wrong.
        msg: String,
    },

    /// A file-level problem with a safetensors file or a sharded checkpoint's index.
    #[error("{}: {msg}", path.display())]
    Safetensors {
        /// The `.safetensors` file, index file, or checkpoint directory.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },

    /// A problem with one tensor of a safetensors file.
    #[error("{}: tensor `{tensor}`: {msg}", path.display())]
    Tensor {
        /// The file holding (or meant to hold) the tensor.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// What is wrong.
        msg: String,
    },

    /// A tensor that was asked for and is not in the checkpoint.
    #[error("{}: missing tensor `{tensor}`", path.display())]
    MissingTensor {
        /// The checkpoint (file, or directory for a sharded checkpoint).
        path: PathBuf,
        /// The tensor name.
        tensor: String,
    },

    /// A GGUF file that is truncated, malformed, or holds something we do not read.
    #[error("{}: {field}: {msg}", path.display())]
    Gguf {
        /// The `.gguf` file.
        path: PathBuf,
        /// The header field or metadata key being read.
        field: String,
        /// What is wrong.
        msg: String,
    },

    /// A routing-trace chunk file that is truncated, damaged or of another model's shape.
    #[error("{}: {msg}", path.display())]
    Trace {
        /// The chunk file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },

    /// Bad runtime input, e.g. a token id out of range or mismatched shapes.
    #[error("invalid input: {0}")]
    Invalid(String),

    /// A feature the toolkit does not implement (the message names the file and field where there is one).
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl From<atomicio::Error> for ModelError {
    fn from(e: atomicio::Error) -> Self {
        ModelError::Io { path: e.path, cause: e.cause }
    }
}

/// Result type of the model crate.
pub type Result<T> = std::result::Result<T, ModelError>;

impl ModelError {
    /// An [`ModelError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        ModelError::Io { path: path.into(), cause }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_file_and_item() {
        let e = ModelError::Tensor {
            path: "/x/model.safetensors".into(),
            tensor: "lm_head.weight".into(),
            msg: "bad".into(),
        };
        assert_eq!(e.to_string(), "/x/model.safetensors: tensor `lm_head.weight`: bad");
        let e = ModelError::ConfigField { path: "c.json".into(), field: "vocab_size".into(), msg: "missing".into() };
        assert_eq!(e.to_string(), "c.json: field `vocab_size`: missing");
        let e = ModelError::MissingTensor { path: "m.safetensors".into(), tensor: "w".into() };
        assert_eq!(e.to_string(), "m.safetensors: missing tensor `w`");
        let e = ModelError::io("a.json", std::io::Error::new(std::io::ErrorKind::NotFound, "gone"));
        assert_eq!(e.to_string(), "a.json: gone");
        let e = ModelError::ConfigJson { path: "a.json".into(), msg: "file is empty".into() };
        assert_eq!(e.to_string(), "a.json: not valid JSON: file is empty");
    }
}
