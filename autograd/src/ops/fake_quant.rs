//! Format-exact fake quantization of a weight for quantization-aware training: `ŵ` is exactly the
//! dequantization of the GGUF blocks the exporter writes from the same steps and mins
//! (kernels-cpu `fake_quant`, whose module doc has the formats and the gradients). Gradients reach
//! the latent weight (straight-through inside the clamp range), the steps (LSQ) and, for the
//! asymmetric formats (Q5_K, Q5_1), the mins (LSQ+).

use super::ensure;
use crate::backend::{kernel, kernel_bwd};
use crate::error::{AutogradError, Result};
use crate::tape::Tape;
use crate::tensor::Tensor;
use kernels_cpu::buffer::zeroed;
pub use kernels_cpu::fake_quant::FakeQuantDims;

/// The first non-finite value of `x`, as an error naming `what`.
fn check_finite(x: &[f32], what: &str, dims: &FakeQuantDims) -> Result<()> {
    match x.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(AutogradError::Config {
            op: "fake_quant",
            msg: format!(
                "{what} of group {} of row {} is {} (the quantization parameters must be finite)",
                i % dims.groups_per_row(),
                i / dims.groups_per_row(),
                x[i]
            ),
        }),
    }
}

/// `ŵ = fake_quant(w; step, min)` for `w` of `dims.rows * dims.row_len` values (any shape),
/// `step` and `min` of `dims.params_len()` values; `min` is required for the asymmetric formats
/// and refused for the symmetric ones. Non-finite steps or mins are an error.
pub fn fake_quant(tape: &Tape, w: &Tensor, step: &Tensor, min: Option<&Tensor>, dims: FakeQuantDims) -> Result<Tensor> {
    dims.check().map_err(|e| AutogradError::Config { op: "fake_quant", msg: e.to_string() })?;
    ensure(w.numel() == dims.rows * dims.row_len, "fake_quant", || {
        format!("weight {:?} is not {} x {}", w.shape(), dims.rows, dims.row_len)
    })?;
    ensure(step.numel() == dims.params_len(), "fake_quant", || {
        format!("step {:?} is not {} values (rows x row_len / group)", step.shape(), dims.params_len())
    })?;
    ensure(min.is_some() == dims.has_min(), "fake_quant", || {
        format!("{} {}", dims.ty, if dims.has_min() { "needs a min" } else { "takes no min" })
    })?;
    if let Some(m) = min {
        ensure(m.numel() == dims.params_len(), "fake_quant", || {
            format!("min {:?} is not {} values", m.shape(), dims.params_len())
        })?;
    }
    let (wv, sv) = (w.f32s(), step.f32s());
    let mv = min.map(Tensor::f32s).unwrap_or_default();
    check_finite(&sv, "the step", &dims)?;
    check_finite(&mv, "the min", &dims)?;
    let be = tape.backend().clone();
    let mut out = zeroed(w.numel());
    kernel("fake_quant", be.fake_quant_forward(&mut out, &wv, &sv, &mv, dims))?;
    let (wt, st, mt) = (w.clone(), step.clone(), min.cloned());
    let inputs: Vec<&Tensor> = [Some(w), Some(step), min].into_iter().flatten().collect();
    Ok(tape.record(Tensor::from_vec(out, w.shape()), &inputs, move |dy, g| {
        let (mut dw, mut ds) = (g.take(&wt), g.take(&st));
        let mut dm = mt.as_ref().map(|m| g.take(m)).unwrap_or_default();
        let mv = mt.as_ref().map(|m| m.f32s().into_owned()).unwrap_or_default();
        kernel_bwd(
            "fake_quant",
            be.fake_quant_backward(&mut dw, &mut ds, &mut dm, dy, &wt.f32s(), &st.f32s(), &mv, dims),
        );
        g.put(&wt, dw);
        g.put(&st, ds);
        if let Some(m) = &mt {
            g.put(m, dm);
        }
    }))
}

/// One fake-quantized range of a fused weight (q/k/v, gate/up, the experts' block): `dims.rows *
/// dims.row_len` values from `offset`, with their steps and mins.
#[derive(Clone, Debug)]
pub struct FakeQuantSegment {
    /// First value of the range in the fused weight.
    pub offset: usize,
    /// Format and layout of the range.
    pub dims: FakeQuantDims,
    /// Steps `[dims.params_len()]`.
    pub step: Tensor,
    /// Mins (asymmetric formats only).
    pub min: Option<Tensor>,
}

/// `w` with each of `segs` (non-overlapping, in any order) fake-quantized and every other value
/// passed through: a fused weight whose parts train in different formats, or not at all.
pub fn fake_quant_segments(tape: &Tape, w: &Tensor, segs: &[FakeQuantSegment]) -> Result<Tensor> {
    let mut order: Vec<usize> = (0..segs.len()).collect();
    order.sort_by_key(|&i| segs[i].offset);
    let mut end = 0;
    for &i in &order {
        let s = &segs[i];
        s.dims.check().map_err(|e| AutogradError::Config { op: "fake_quant", msg: e.to_string() })?;
        let n = s.dims.rows * s.dims.row_len;
        ensure(s.offset >= end && s.offset + n <= w.numel(), "fake_quant", || {
            format!("segment at {} of {n} values overlaps another or leaves the weight of {}", s.offset, w.numel())
        })?;
        ensure(s.step.numel() == s.dims.params_len() && s.min.is_some() == s.dims.has_min(), "fake_quant", || {
            format!("segment at {}: step/min do not fit {:?}", s.offset, s.dims)
        })?;
        if let Some(m) = &s.min {
            ensure(m.numel() == s.dims.params_len(), "fake_quant", || format!("segment at {}: min length", s.offset))?;
            check_finite(&m.f32s(), "the min", &s.dims)?;
        }
        check_finite(&s.step.f32s(), "the step", &s.dims)?;
        end = s.offset + n;
    }
    let be = tape.backend().clone();
    let wv = w.f32s();
    let mut out = wv.to_vec();
    for s in segs {
        let n = s.dims.rows * s.dims.row_len;
        let mv = s.min.as_ref().map(Tensor::f32s).unwrap_or_default();
        let range = s.offset..s.offset + n;
        kernel("fake_quant", be.fake_quant_forward(&mut out[range.clone()], &wv[range], &s.step.f32s(), &mv, s.dims))?;
    }
    drop(wv);
    let wt = w.clone();
    let saved: Vec<FakeQuantSegment> = order.iter().map(|&i| segs[i].clone()).collect();
    let mut inputs: Vec<&Tensor> = vec![w];
    for s in segs {
        inputs.push(&s.step);
        if let Some(m) = &s.min {
            inputs.push(m);
        }
    }
    Ok(tape.record(Tensor::from_vec(out, w.shape()), &inputs, move |dy, g| {
        let mut dw = g.take(&wt);
        let wv = wt.f32s();
        // Pass-through between the segments.
        let mut at = 0;
        for s in &saved {
            kernels_cpu::elementwise::axpy(&mut dw[at..s.offset], 1.0, &dy[at..s.offset]);
            at = s.offset + s.dims.rows * s.dims.row_len;
        }
        kernels_cpu::elementwise::axpy(&mut dw[at..], 1.0, &dy[at..]);
        for s in &saved {
            let range = s.offset..s.offset + s.dims.rows * s.dims.row_len;
            let mut ds = g.take(&s.step);
            let mut dm = s.min.as_ref().map(|m| g.take(m)).unwrap_or_default();
            let mv = s.min.as_ref().map(|m| m.f32s().into_owned()).unwrap_or_default();
            kernel_bwd(
                "fake_quant",
                be.fake_quant_backward(
                    &mut dw[range.clone()],
                    &mut ds,
                    &mut dm,
                    &dy[range.clone()],
                    &wv[range],
                    &s.step.f32s(),
                    &mv,
                    s.dims,
                ),
            );
            g.put(&s.step, ds);
            if let Some(m) = &s.min {
                g.put(m, dm);
            }
        }
        drop(wv);
        g.put(&wt, dw);
    }))
}
