//! Fused fake quantizer with a learnable clip per group (symmetric, signed, `bits` in 4..=8),
//! LSQ-style gradients.
//!
//! Shapes: `w`, `y`, `dw`, `dy` `[len]` split into contiguous groups of `group` elements (the last
//! may be shorter); `clip`, `dclip` `[ceil(len / group)]`.
//!
//! Math, with `qmax = 2^(bits-1) - 1`, clip `a > 0` of the element's group and step `s = a / qmax`:
//! - forward: `v = clamp(w, -a, a) / s`, `y = rint(v) * s` (round half to even);
//! - `dy/dw = 1` strictly inside the clip range (`|w| < a`), else 0 (straight-through);
//! - `dy/da = (rint(v) - v) / qmax` inside (LSQ: the rounding passes the gradient straight
//!   through, `ds/da = 1 / qmax`), `sign(w)` outside (`y = ±a`); the group's sum is multiplied by
//!   `grad_scale` (LSQ's `1 / sqrt(group * qmax)`, or 1).

use super::grid_stride;
use super::reduce::block_sum;
use crate::simt::{rint_small, Gmem, Simt};

/// `2^(bits-1) - 1` for signed symmetric `bits`-bit codes.
pub const fn qmax(bits: u32) -> f32 {
    ((1u32 << (bits - 1)) - 1) as f32
}

/// Quantize-dequantize of one element: `(y, inside, v)`.
#[inline(always)]
fn quant(w: f32, a: f32, qmax: f32) -> (f32, bool, f32) {
    let s = a / qmax;
    let wc = w.max(-a).min(a);
    let v = wc / s;
    (rint_small(v) * s, w.abs() < a, v)
}

/// `y = fake_quant(w)` elementwise.
///
/// Launch: grid-stride over `len` (any 1-D grid and block; GPU 256), no shared memory.
#[allow(clippy::too_many_arguments)]
pub fn fake_quant_forward<C: Simt>(
    ctx: &C,
    y: Gmem<f32>,
    w: Gmem<f32>,
    clip: Gmem<f32>,
    len: usize,
    group: usize,
    qmax: f32,
) {
    let (mut i, stride) = grid_stride(ctx);
    while i < len {
        // SAFETY: i < len; i / group < number of groups.
        unsafe {
            let (v, _, _) = quant(w.read(i), clip.read(i / group), qmax);
            y.write(i, v);
        }
        i += stride;
    }
}

/// Accumulates `dw += dy * [|w| < a]` and `dclip[g] += grad_scale * sum_g dy * dy/da`; one block
/// per group (groups grid-stride over blocks).
///
/// Launch: grid `(min(G, cap), 1, 1)`, block a multiple of 32 (GPU 128), no dynamic shared memory
/// (static: 32 f32).
#[allow(clippy::too_many_arguments)]
pub fn fake_quant_backward<C: Simt>(
    ctx: &C,
    dw: Gmem<f32>,
    dclip: Gmem<f32>,
    dy: Gmem<f32>,
    w: Gmem<f32>,
    clip: Gmem<f32>,
    len: usize,
    group: usize,
    qmax: f32,
    grad_scale: f32,
) {
    let (t, bd) = (ctx.thread_linear() as usize, ctx.block_threads() as usize);
    let groups = len.div_ceil(group);
    let mut g = ctx.block_idx().x as usize;
    while g < groups {
        // SAFETY: indices below len; group g's elements and dclip[g] belong to this block.
        unsafe {
            let a = clip.read(g);
            let (start, end) = (g * group, if (g + 1) * group < len { (g + 1) * group } else { len });
            let mut acc = 0f32;
            let mut i = start + t;
            while i < end {
                let (wi, d) = (w.read(i), dy.read(i));
                let (_, inside, v) = quant(wi, a, qmax);
                if inside {
                    dw.write(i, dw.read(i) + d);
                    acc = C::fma(d, (rint_small(v) - v) / qmax, acc);
                } else {
                    acc += if wi < 0.0 { -d } else { d };
                }
                i += bd;
            }
            let total = block_sum(ctx, acc);
            if t == 0 {
                dclip.write(g, C::fma(grad_scale, total, dclip.read(g)));
            }
        }
        g += ctx.grid_dim().x as usize;
    }
}
