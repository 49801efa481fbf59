//! The HF tokenizer files a model directory carries (DESIGN §6: every directory the pipeline writes
//! holds them, so `export gguf` and the chat tools work on any of them).

use crate::error::{ModelError, Result};
use std::path::{Path, PathBuf};

/// The tokenizer files of an HF model directory.
pub const TOKENIZER_FILES: [&str; 2] = ["tokenizer.json", "tokenizer_config.json"];

/// Copies the [`TOKENIZER_FILES`] that `from` holds into the directory `to` (each written
/// atomically); returns the files written. A missing file is skipped, not an error.
pub fn copy_tokenizer_files(from: &Path, to: &Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for name in TOKENIZER_FILES {
        let src = from.join(name);
        if src.is_file() {
            let bytes = std::fs::read(&src).map_err(|e| ModelError::io(&src, e))?;
            let dst = to.join(name);
            atomicio::write_file(&dst, &bytes)?;
            written.push(dst);
        }
    }
    Ok(written)
}
