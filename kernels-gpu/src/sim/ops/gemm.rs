//! Host helpers of the grouped GEMMs and of an expert layer's three GEMMs, forward and backward.

use super::{ensure, rd, wr};
use crate::kernels::gemm::{GroupedGemm, Operand, TokenAxis, TOKENS};
use crate::kernels::{gemm_fma, gemm_mma};
use crate::sim::{launch, SimError};
use crate::simt::{bf16_from_f32, Dim3, Gmem};

/// Element type of a grouped GEMM's inputs, which picks the kernel: f32 runs
/// [`gemm_fma::grouped_gemm_fma`], bf16 bits (`u16`) run [`gemm_mma::grouped_gemm_mma`].
pub trait GemmElem: Copy + Send + Sync + 'static {
    /// Launches the kernel of this element type on `grid`.
    fn launch_gemm(p: GroupedGemm<Self>, grid: Dim3) -> Result<(), SimError>;
}

impl GemmElem for f32 {
    fn launch_gemm(p: GroupedGemm<f32>, grid: Dim3) -> Result<(), SimError> {
        launch(grid, Dim3::x(gemm_fma::THREADS), gemm_fma::SHARED_BYTES, |ctx| gemm_fma::grouped_gemm_fma(ctx, p))
    }
}

impl GemmElem for u16 {
    fn launch_gemm(p: GroupedGemm<u16>, grid: Dim3) -> Result<(), SimError> {
        let contiguous = |rs: usize, cs: usize| rs == 1 || cs == 1;
        ensure(contiguous(p.a.rs, p.a.cs) && contiguous(p.b.rs, p.b.cs), || {
            "mma gemm: every operand must be contiguous along one axis".into()
        })?;
        launch(grid, Dim3::x(gemm_mma::THREADS), gemm_mma::SHARED_BYTES, |ctx| gemm_mma::grouped_gemm_mma(ctx, p))
    }
}

/// Runs a grouped GEMM over `groups` groups. `offsets` is the host copy of `p.offsets`
/// (`[groups + 1]`, needed when a dimension is [`TOKENS`]) from which the grid is sized.
/// The caller guarantees that the operands' pointers cover the extents the dims imply.
pub fn grouped_gemm<T: GemmElem>(p: GroupedGemm<T>, offsets: Option<&[u32]>, groups: usize) -> Result<(), SimError> {
    let uses_tokens = p.m == TOKENS || p.n == TOKENS || p.k == TOKENS;
    ensure(!uses_tokens || offsets.is_some_and(|o| o.len() == groups + 1), || {
        format!("grouped gemm: TOKENS needs {} offsets", groups + 1)
    })?;
    ensure(groups > 0 && groups <= 65535, || format!("grouped gemm: {groups} groups"))?;
    let max_tokens = offsets.map_or(0, |o| o.windows(2).map(|w| w[1].saturating_sub(w[0])).max().unwrap_or(0)) as usize;
    let pick = |x: usize| if x == TOKENS { max_tokens } else { x };
    let (m, n) = (pick(p.m), pick(p.n));
    if m == 0 || n == 0 {
        return Ok(());
    }
    let grid = Dim3::new(n.div_ceil(32) as u32, m.div_ceil(32) as u32, groups as u32);
    T::launch_gemm(p, grid)
}

/// Which grouped GEMM runs an expert layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExpertsGemm {
    /// f32 FMA tiles.
    #[default]
    Fma,
    /// bf16 inputs, f32 accumulation, tensor-core MMA (inputs rounded to bf16 on the way in).
    MmaBf16,
}

/// f32 -> bf16 bits (round to nearest even).
pub fn to_bf16(x: &[f32]) -> Vec<u16> {
    x.iter().map(|&v| bf16_from_f32(v)).collect()
}

fn operand<T: Copy>(ptr: Gmem<T>, rs: usize, cs: usize, axis: TokenAxis) -> Operand<T> {
    Operand { ptr, rs, cs, group_stride: 0, offset: 0, axis }
}

/// Expert `g`'s weight matrix at `offset` inside `[E, 3*W*D]`.
fn weight<T: Copy>(ptr: Gmem<T>, rs: usize, cs: usize, w: usize, d: usize, offset: usize) -> Operand<T> {
    Operand { ptr, rs, cs, group_stride: 3 * w * d, offset, axis: TokenAxis::None }
}

fn check(offsets: &[u32], experts: usize, d: usize, w: usize) -> Result<(usize, usize), SimError> {
    ensure(offsets.len() >= 2 && offsets.windows(2).all(|p| p[0] <= p[1]), || "experts: bad offsets".into())?;
    let e = offsets.len() - 1;
    ensure(d > 0 && w > 0 && experts == e * 3 * w * d, || "experts: weights are not [E, 3*W*D]".into())?;
    Ok((e, offsets[e] as usize))
}

/// One grouped GEMM of the expert layer in element type `T`.
#[allow(clippy::too_many_arguments)]
fn gemm<T: GemmElem>(
    a: Operand<T>,
    b: Operand<T>,
    c: Operand<f32>,
    (m, n, k): (usize, usize, usize),
    offsets: &[u32],
    accumulate: bool,
) -> Result<(), SimError> {
    let p = GroupedGemm { a, b, c, m, n, k, offsets: rd(offsets), accumulate };
    grouped_gemm(p, Some(offsets), offsets.len() - 1)
}

/// Forward of every expert on its rows, as kernels-cpu `moe::experts::experts_forward`: per expert
/// `hgu = xp · guᵀ` (gate and up adjacent: `gu [2W, D]`), `a = silu(hg) * hu`, `y = a · downᵀ`.
/// Shapes: `y`, `xp` `[Nk, D]`; `hgu` `[Nk, 2W]` (each row gate then up); `a` `[Nk, W]`;
/// `experts` `[E, 3*W*D]` (per expert `gate_proj [W, D]`, `up_proj [W, D]`, `down_proj [D, W]`);
/// `offsets` `[E+1]`.
#[allow(clippy::too_many_arguments)]
pub fn experts_forward(
    kind: ExpertsGemm,
    y: &mut [f32],
    hgu: &mut [f32],
    a: &mut [f32],
    xp: &[f32],
    experts: &[f32],
    offsets: &[u32],
    d: usize,
    w: usize,
) -> Result<(), SimError> {
    let (_, nk) = check(offsets, experts.len(), d, w)?;
    ensure(y.len() == nk * d && xp.len() == nk * d && hgu.len() == nk * 2 * w && a.len() == nk * w, || {
        "experts forward: activation shapes".into()
    })?;
    match kind {
        ExpertsGemm::Fma => forward_t(y, hgu, a, xp.to_vec(), experts.to_vec(), offsets, d, w, |v| v.to_vec()),
        ExpertsGemm::MmaBf16 => forward_t(y, hgu, a, to_bf16(xp), to_bf16(experts), offsets, d, w, to_bf16),
    }
}

#[allow(clippy::too_many_arguments)]
fn forward_t<T: GemmElem>(
    y: &mut [f32],
    hgu: &mut [f32],
    a: &mut [f32],
    xp: Vec<T>,
    experts: Vec<T>,
    offsets: &[u32],
    d: usize,
    w: usize,
    conv: impl Fn(&[f32]) -> Vec<T>,
) -> Result<(), SimError> {
    let (x, wt) = (rd(&xp), rd(&experts));
    let xa = operand(x, d, 1, TokenAxis::Rows);
    let out = operand(wr(hgu), 2 * w, 1, TokenAxis::Rows);
    gemm(xa, weight(wt, 1, d, w, d, 0), out, (TOKENS, 2 * w, d), offsets, false)?;
    super::swiglu_fused_forward(a, hgu, w)?;
    let act = conv(a);
    let aa = operand(rd(&act), w, 1, TokenAxis::Rows);
    gemm(aa, weight(wt, 1, w, w, d, 2 * w * d), operand(wr(y), d, 1, TokenAxis::Rows), (TOKENS, d, w), offsets, false)
}

/// Backward of [`experts_forward`], as kernels-cpu `moe::experts::experts_backward`: accumulates
/// `dxp [Nk, D]` and `dexperts [E, 3*W*D]` from `dy [Nk, D]` and the saved `hgu`, `a`.
#[allow(clippy::too_many_arguments)]
pub fn experts_backward(
    kind: ExpertsGemm,
    dxp: &mut [f32],
    dexperts: &mut [f32],
    dy: &[f32],
    xp: &[f32],
    hgu: &[f32],
    a: &[f32],
    experts: &[f32],
    offsets: &[u32],
    d: usize,
    w: usize,
) -> Result<(), SimError> {
    let (_, nk) = check(offsets, experts.len(), d, w)?;
    ensure(dexperts.len() == experts.len(), || "experts backward: dexperts is not [E, 3*W*D]".into())?;
    ensure(
        dxp.len() == nk * d && dy.len() == nk * d && xp.len() == nk * d && hgu.len() == nk * 2 * w && a.len() == nk * w,
        || "experts backward: activation shapes".into(),
    )?;
    let g = Grads { dxp, dexperts, hgu, offsets, d, w };
    match kind {
        ExpertsGemm::Fma => backward_t(g, dy.to_vec(), xp.to_vec(), a.to_vec(), experts.to_vec(), |v| v.to_vec()),
        ExpertsGemm::MmaBf16 => backward_t(g, to_bf16(dy), to_bf16(xp), to_bf16(a), to_bf16(experts), to_bf16),
    }
}

struct Grads<'a> {
    dxp: &'a mut [f32],
    dexperts: &'a mut [f32],
    hgu: &'a [f32],
    offsets: &'a [u32],
    d: usize,
    w: usize,
}

fn backward_t<T: GemmElem>(
    g: Grads<'_>,
    dy: Vec<T>,
    xp: Vec<T>,
    a: Vec<T>,
    experts: Vec<T>,
    conv: impl Fn(&[f32]) -> Vec<T>,
) -> Result<(), SimError> {
    let (d, w, off) = (g.d, g.w, g.offsets);
    let nk = xp.len() / d;
    let (dyp, xpp, ap, wt) = (rd(&dy), rd(&xp), rd(&a), rd(&experts));
    let dexp = wr(g.dexperts);
    // da = dy · down            [Nk, W]
    let mut da = vec![0f32; nk * w];
    let dy_rows = operand(dyp, d, 1, TokenAxis::Rows);
    gemm(
        dy_rows,
        weight(wt, w, 1, w, d, 2 * w * d),
        operand(wr(&mut da), w, 1, TokenAxis::Rows),
        (TOKENS, w, d),
        off,
        false,
    )?;
    // ddown += dyᵀ · a          [D, W]
    let dy_t = operand(dyp, 1, d, TokenAxis::Cols);
    gemm(dy_t, operand(ap, w, 1, TokenAxis::Rows), weight(dexp, w, 1, w, d, 2 * w * d), (d, w, TOKENS), off, true)?;
    let mut dhgu = vec![0f32; nk * 2 * w];
    super::swiglu_fused_backward(&mut dhgu, &da, g.hgu, w)?;
    let dhgu_t = conv(&dhgu);
    let dh = rd(&dhgu_t);
    // dgu += dhguᵀ · xp         [2W, D]
    let xrows = operand(xpp, d, 1, TokenAxis::Rows);
    gemm(operand(dh, 1, 2 * w, TokenAxis::Cols), xrows, weight(dexp, d, 1, w, d, 0), (2 * w, d, TOKENS), off, true)?;
    // dxp += dhgu · gu          [Nk, D]
    let dx = operand(wr(g.dxp), d, 1, TokenAxis::Rows);
    gemm(operand(dh, 2 * w, 1, TokenAxis::Rows), weight(wt, d, 1, w, d, 0), dx, (TOKENS, d, 2 * w), off, true)
}
