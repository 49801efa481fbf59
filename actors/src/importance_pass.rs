//! The importance stage's pass: Taylor scores of the base's FFN neurons as an EMA over batches of
//! the train pack ([`TaylorState`]), streaming (one batch in memory), over a fixed number of
//! batches or the whole pack (`importance_batches: 0`, the seed plan's "over the full P0 corpus").
//! Resumable: every [`SAVE_EVERY`] batches the state goes to `importance.partial.safetensors`
//! (atomically), and a pass that finds one continues after its last batch; the EMA state is
//! stored exactly, so a resumed pass writes the same file as an uninterrupted one.

use crate::error::Result;
use crate::faults::{Faults, KillPoint};
use data::pack::PackedDataset;
use model::importance::{read_taylor_state, write_importance, TaylorForm, TaylorState};
use model::Qwen3;
use std::collections::HashMap;
use std::path::Path;

/// Batches between two saves of the partial state.
pub const SAVE_EVERY: u64 = 8;
/// The partial state's file in the stage directory.
pub const PARTIAL_FILE: &str = "importance.partial.safetensors";
/// The result's file in the stage directory.
pub const RESULT_FILE: &str = "importance.safetensors";
/// EMA decay per batch.
pub const DECAY: f32 = 0.99;

/// Batches of `batch` sequences a pass of `configured` batches makes over `sequences`
/// (0: the whole pack once, the last batch shorter).
pub fn batches_of(configured: u64, batch: usize, sequences: u64) -> u64 {
    if configured == 0 {
        sequences.div_ceil(batch as u64)
    } else {
        configured
    }
}

/// The sequence indices of batch `b` (wrapping around the pack for a fixed count; a whole-pack
/// pass ends at its last sequence).
fn sequences_of(b: u64, batch: usize, n: u64, whole: bool) -> Vec<u64> {
    let start = b * batch as u64;
    if whole {
        (start..(start + batch as u64).min(n)).collect()
    } else {
        (0..batch as u64).map(|i| (start + i) % n).collect()
    }
}

/// What a pass did.
pub struct PassOutcome {
    /// The state after every batch.
    pub state: TaylorState,
    /// The batch it resumed at (0: from scratch).
    pub resumed_at: u64,
}

/// Runs (or resumes) the pass into `dir/importance.safetensors`; `meta` goes into the file.
pub fn run(
    model: &Qwen3,
    ds: &PackedDataset,
    configured_batches: u64,
    batch: usize,
    dir: &Path,
    meta: &HashMap<String, String>,
    faults: &Faults,
) -> Result<PassOutcome> {
    let (l, f) = (model.config.num_hidden_layers, model.config.intermediate_size);
    let n = ds.len();
    let whole = configured_batches == 0;
    let total = batches_of(configured_batches, batch, n);
    let partial = dir.join(PARTIAL_FILE);
    let mut state = TaylorState::new(l, f, DECAY);
    if partial.is_file() {
        // The build key of the stage directory covers the base, the pack and the settings, so
        // a partial state here belongs to this pass; a damaged one starts it again.
        match read_taylor_state(&partial) {
            Ok((s, _)) if s.layers == l && s.width == f && s.batches <= total => state = s,
            _ => {}
        }
    }
    let resumed_at = state.batches;
    for b in state.batches..total {
        let seqs = sequences_of(b, batch, n, whole);
        let (tokens, targets) = crate::eval::token_batch_of(data::pack::batch_of(ds, &seqs));
        state.update(model, &tokens, &targets)?;
        let done = b + 1;
        if done % SAVE_EVERY == 0 && done < total {
            write_importance(&partial, &state, TaylorForm::First, meta)?;
            faults.kill_if(KillPoint::Importance, done);
        }
    }
    write_importance(&dir.join(RESULT_FILE), &state, TaylorForm::First, meta)?;
    let _ = std::fs::remove_file(&partial);
    Ok(PassOutcome { state, resumed_at })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_pack_pass_visits_every_sequence_once() {
        let (n, batch) = (37u64, 8usize);
        let total = batches_of(0, batch, n);
        assert_eq!(total, 5);
        let seen: Vec<u64> = (0..total).flat_map(|b| sequences_of(b, batch, n, true)).collect();
        assert_eq!(seen, (0..n).collect::<Vec<_>>());
        // A fixed count wraps around the pack.
        assert_eq!(batches_of(7, batch, n), 7);
        assert_eq!(sequences_of(4, batch, n, false), [32, 33, 34, 35, 36, 0, 1, 2]);
    }
}
