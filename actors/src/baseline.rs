//! Stages `baseline-small` and `teacher-continued`: dense references trained on exactly the
//! micro-batches the MoE's line saw (the small one from scratch on base + p0 + p1, the teacher
//! continued on p0 + p1). Its phase config names the phases it follows
//! (`same_tokens_as: ["base", "p0", "p1"]`); its stream is theirs one after another
//! ([`BatchStream::chain`]: each segment drawn with that phase's mix, seed and domain-biased
//! share, as that phase drew it), its budget the sum of their micro-batches. The phases must cut
//! the same micro-batches (micro_batch and seq_len equal); the learning rate schedule is the
//! reference's own, over the whole budget.

use crate::batches::BatchStream;
use crate::error::{EngineError, Result};
use crate::manifest::Stage;
use crate::phase::PhaseConfig;
use crate::stages::Pipeline;
use data::pack::PackedDataset;
use std::collections::BTreeMap;
use std::sync::Arc;

impl Pipeline {
    /// The phases `cfg` follows, resolved, with the micro-batches each trains on; `source` names
    /// `cfg`'s file in errors.
    pub(crate) fn segments(&self, cfg: &PhaseConfig, source: &str) -> Result<Vec<(PhaseConfig, u64)>> {
        let mut out = Vec::with_capacity(cfg.same_tokens_as.len());
        for name in &cfg.same_tokens_as {
            let bad = |msg: String| EngineError::config(source, format!("field `same_tokens_as`: `{name}`: {msg}"));
            let stage = Stage::from_name(name).map_err(|e| bad(e.to_string()))?;
            if !matches!(stage, Stage::Base | Stage::P0 | Stage::P1) {
                return Err(bad(
                    "only phases that train on the run's packed corpus (base, p0, p1) can be followed".into()
                ));
            }
            let seg = self.phase_config(stage)?;
            for (field, ours, theirs) in
                [("micro_batch", cfg.micro_batch, seg.micro_batch), ("seq_len", cfg.seq_len, seg.seq_len)]
            {
                if ours != theirs {
                    return Err(EngineError::config(
                        source,
                        format!(
                            "field `{field}`: {ours} but phase `{name}` has {theirs}: the same micro-batches need the \
                             same shape"
                        ),
                    ));
                }
            }
            let n = seg.total_steps() * seg.accumulation();
            out.push((seg, n));
        }
        Ok(out)
    }

    /// The stream of `cfg`'s phases one after another, and the micro-batches taken from each
    /// (`micro_batches_<phase>` in the summary's data counts).
    pub(crate) fn chained_stream(
        &self,
        cfg: &PhaseConfig,
        ds: &Arc<PackedDataset>,
    ) -> Result<(BatchStream, BTreeMap<String, f64>)> {
        let mut parts = Vec::new();
        let mut stats = BTreeMap::new();
        for (seg, n) in self.segments(cfg, &cfg.phase)? {
            parts.push((BatchStream::new(ds.clone(), &seg.mix, seg.micro_batch, seg.seed, n)?, n));
            stats.insert(format!("micro_batches_{}", seg.phase), n as f64);
        }
        Ok((BatchStream::chain(parts)?, stats))
    }
}
