//! The QAT parameters as the trainer optimises them: the steps and mins of every fake-quantized
//! tensor ([`model::qat::QatState`]) as one flat vector (tensors in name order, steps then mins)
//! with their own AdamW moments: their own learning rate (`lr_mult` x the weights'), no weight
//! decay (research/qat-po-sft.md section 1: LSQ / EfficientQAT scale groups).

use kernels_cpu::adamw::{adamw_step, AdamWConfig};
use model::qat::{QatGrads, QatState};
use serde::{Deserialize, Serialize};

/// QAT parameters, their AdamW moments and step count.
#[derive(Clone, Debug, PartialEq)]
pub struct QatTraining {
    /// The parameters (and their layouts).
    pub state: QatState,
    /// Learning rate of the QAT parameters relative to the weights'.
    pub lr_mult: f32,
    /// AdamW state.
    pub moments: QatMoments,
}

/// AdamW moments of the flat QAT parameters (saved with a checkpoint for an exact resume).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QatMoments {
    /// First moments.
    pub m: Vec<f32>,
    /// Second moments.
    pub v: Vec<f32>,
    /// Updates applied.
    pub step: u64,
}

impl QatTraining {
    /// Fresh moments for `state`.
    pub fn new(state: QatState, lr_mult: f32) -> Self {
        let n = numel(&state);
        QatTraining { state, lr_mult, moments: QatMoments { m: vec![0.0; n], v: vec![0.0; n], step: 0 } }
    }

    /// The gradients of one forward as a flat vector (zeros for a tensor that got none).
    pub fn flat_grads(&self, g: &QatGrads) -> Vec<f32> {
        let mut out = Vec::with_capacity(numel(&self.state));
        for (name, t) in &self.state.tensors {
            match g.get(name) {
                Some((ds, dm)) => {
                    out.extend_from_slice(ds);
                    out.extend_from_slice(dm);
                }
                None => out.resize(out.len() + t.step.len() + t.min.len(), 0.0),
            }
        }
        out
    }

    /// One AdamW update with the flat gradient `grads` at the weights' learning rate `lr`.
    ///
    /// Adam runs in relative coordinates: `ln(step)` and `min / step` (the group's step before
    /// the update), so `lr * lr_mult` is a relative change per update whatever a group's size.
    /// In absolute coordinates Adam's sign-like updates of `lr * lr_mult` move the small steps of
    /// Q8_0 (max|w| / 127) by most of themselves per update, and the model drifts from the
    /// pre-QAT one instead of approaching it. A step that is not positive and finite keeps its
    /// values (the non-finite guard sees a NaN).
    pub fn step(&mut self, grads: &[f32], lr: f32, betas: [f32; 2]) {
        let usable = |st: f32| st > 0.0 && st.is_finite();
        let (mut u, mut gu) = (Vec::with_capacity(grads.len()), Vec::with_capacity(grads.len()));
        let mut at = 0;
        for t in self.state.tensors.values() {
            let s = t.step.len();
            for (i, &st) in t.step.iter().enumerate() {
                let ok = usable(st);
                u.push(if ok { st.ln() } else { 0.0 });
                gu.push(if ok { grads[at + i] * st } else { 0.0 });
            }
            for (j, &mn) in t.min.iter().enumerate() {
                let st = t.step[j];
                let ok = usable(st);
                u.push(if ok { mn / st } else { 0.0 });
                gu.push(if ok { grads[at + s + j] * st } else { 0.0 });
            }
            at += s + t.min.len();
        }
        let cfg = AdamWConfig { lr: lr * self.lr_mult, beta1: betas[0], beta2: betas[1], eps: 1e-8, weight_decay: 0.0 };
        self.moments.step += 1;
        adamw_step(&mut u, &gu, &mut self.moments.m, &mut self.moments.v, &cfg, self.moments.step);
        let mut at = 0;
        for t in self.state.tensors.values_mut() {
            let s = t.step.len();
            let old: Vec<f32> = t.step.clone();
            for (i, st) in t.step.iter_mut().enumerate() {
                if usable(old[i]) {
                    *st = u[at + i].exp();
                }
            }
            for (j, mn) in t.min.iter_mut().enumerate() {
                if usable(old[j]) {
                    *mn = u[at + s + j] * old[j];
                }
            }
            at += s + t.min.len();
        }
    }
}

/// Values of the flat QAT parameters of `state`.
pub fn numel(state: &QatState) -> usize {
    state.tensors.values().map(|t| t.step.len() + t.min.len()).sum()
}

impl QatTraining {
    /// Moves to the next stage's formats (`plan` of `mask`, same tensors and groups): every group keeps its
    /// clip range (`kernels_cpu::fake_quant::rescale_for_format`) and the moments restart (the
    /// grid changed). Tensors or groups that differ from the current plan are an error.
    pub fn switch_to(&mut self, plan: &model::qat::QatPlan, mask: &model::gguf::Mask) -> crate::error::Result<()> {
        let err = |msg: String| crate::error::EngineError::config(mask.path.display().to_string(), msg);
        if plan.len() != self.state.tensors.len() {
            return Err(err(format!(
                "the new plan has {} tensors, the QAT state {}",
                plan.len(),
                self.state.tensors.len()
            )));
        }
        for (name, t) in self.state.tensors.iter_mut() {
            let p = plan.get(name).ok_or_else(|| err(format!("`{name}` is not in the new plan")))?;
            if (p.dims.rows, p.dims.row_len, p.dims.group) != (t.dims.rows, t.dims.row_len, t.dims.group) {
                return Err(err(format!("`{name}`: layout {:?} differs from the QAT state's {:?}", p.dims, t.dims)));
            }
            let (step, min) = kernels_cpu::fake_quant::rescale_for_format(&t.step, &t.min, t.dims.ty, p.dims.ty);
            (t.step, t.min, t.dims.ty, t.stored_row_len) = (step, min, p.dims.ty, p.stored_row_len);
        }
        self.state.rules = mask.rules.clone();
        *self = QatTraining::new(self.state.clone(), self.lr_mult);
        Ok(())
    }
}

/// Checkpoint file of the QAT parameters' AdamW moments (beside `qat.json` /
/// `qat.safetensors`, [`model::qat::QAT_JSON`]: a QAT checkpoint exports like a QAT model
/// directory).
pub const QAT_MOMENTS_FILE: &str = "qat_moments.safetensors";

impl QatTraining {
    /// The checkpoint files of the QAT state: `qat.json`, `qat.safetensors` (the format
    /// [`QatState::save`] writes) and [`QAT_MOMENTS_FILE`].
    pub fn checkpoint_files(&self) -> crate::error::Result<Vec<(String, Vec<u8>)>> {
        // QatState::save writes files; it is written once into a private scratch directory.
        let scratch = std::env::temp_dir().join(format!(
            "medmoe-qat-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&scratch).map_err(crate::error::EngineError::io(&scratch))?;
        let saved = self.state.save(&scratch);
        let mut out = Vec::new();
        if saved.is_ok() {
            for name in [model::qat::QAT_JSON, model::qat::QAT_SAFETENSORS] {
                let p = scratch.join(name);
                match std::fs::read(&p) {
                    Ok(b) => out.push((name.to_string(), b)),
                    Err(e) => {
                        let _ = std::fs::remove_dir_all(&scratch);
                        return Err(crate::error::EngineError::io(&p)(e));
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(&scratch);
        saved?;
        let n = self.moments.m.len();
        let step = (self.moments.step as i64).to_le_bytes();
        let shape = [n];
        let path = std::path::Path::new(QAT_MOMENTS_FILE);
        let tensors: Vec<(&str, &[usize], &[f32])> =
            vec![("m", &shape[..], &self.moments.m[..]), ("v", &shape[..], &self.moments.v[..])];
        out.push((
            QAT_MOMENTS_FILE.to_string(),
            crate::checkpoint::serialize_with(&tensors, Some(("step", &step[..])), path)?,
        ));
        Ok(out)
    }

    /// The QAT state of checkpoint directory `dir` (None when it holds none), with its moments;
    /// every length is checked against the state.
    pub fn from_checkpoint(dir: &std::path::Path, lr_mult: f32) -> crate::error::Result<Option<QatTraining>> {
        let Some(state) = QatState::load(dir)? else { return Ok(None) };
        let path = dir.join(QAT_MOMENTS_FILE);
        let r = model::safetensors_io::SafetensorsReader::open(&path)?;
        let (m, v, step) = (r.read_f32("m")?, r.read_f32("v")?, r.read_i64("step")?);
        let n = numel(&state);
        if m.len() != n || v.len() != n || step.len() != 1 {
            return Err(crate::error::EngineError::Checkpoint {
                path,
                msg: format!("QAT moments of {} / {} values for {n} QAT parameters", m.len(), v.len()),
            });
        }
        let step = step[0].max(0) as u64;
        Ok(Some(QatTraining { state, lr_mult, moments: QatMoments { m, v, step } }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernels_cpu::fake_quant::FakeQuantDims;
    use kernels_cpu::quant::BlockType;
    use model::qat::QatTensor;

    fn tensor(ty: BlockType, step: Vec<f32>, min: Vec<f32>) -> QatTensor {
        let dims = FakeQuantDims { ty, rows: step.len(), row_len: 32, group: 32 };
        QatTensor { dims, stored_row_len: 32, step, min }
    }

    #[test]
    fn updates_are_relative_to_each_groups_step() {
        // Steps four orders of magnitude apart, one gradient sign for all: Adam's first update is
        // (up to its eps)
        // `lr * mult` in ln(step) and in min / step, so every step moves by the same factor.
        let tensors = [
            ("a".to_string(), tensor(BlockType::Q8_0, vec![1e-4, 1e-2], vec![])),
            ("b".to_string(), tensor(BlockType::Q5_K, vec![1.0, f32::NAN], vec![-16.0, 3.0])),
        ];
        let state = QatState { group: 32, rules: Vec::new(), tensors: tensors.into_iter().collect() };
        let mut q = QatTraining::new(state, 10.0);
        let g = vec![0.5, 2.0, 1e-3, 7.0, -0.25, 1.0];
        assert_eq!(q.flat_grads(&model::qat::QatGrads::default()).len(), g.len());
        q.step(&g, 1e-3, [0.9, 0.95]);
        let factor = (-1e-2f32).exp();
        let a = &q.state.tensors["a"];
        assert!((a.step[0] / 1e-4 - factor).abs() < 1e-5 && (a.step[1] / 1e-2 - factor).abs() < 1e-5, "{:?}", a.step);
        let b = &q.state.tensors["b"];
        assert!((b.step[0] - factor).abs() < 1e-6, "{:?}", b.step);
        assert!(b.step[1].is_nan(), "a NaN step stays for the guard");
        // min / step of group 0 rises by 1e-2 (its gradient is negative), in units of its old step 1.
        assert!((b.min[0] - (-16.0 + 1e-2)).abs() < 1e-5, "{:?}", b.min);
        assert_eq!(b.min[1], 3.0, "the min of a NaN step keeps its value");
    }
}
