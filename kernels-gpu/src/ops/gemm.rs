//! Host sequences of the grouped GEMMs: a dense GEMM (one group), and an expert layer's three
//! GEMMs forward and backward.

use super::{elementwise_dims, ensure};
use crate::kernels::gemm::{GroupedGemm, Operand, TokenAxis, TOKENS};
use crate::kernels::{gemm_fma, gemm_mma};
use crate::launcher::{Elem, LaunchDims, LaunchError, Launcher};
use crate::simt::{bf16_from_f32, Dim3, Gmem};

/// Element type of a grouped GEMM's inputs, which picks the kernel: f32 runs
/// [`gemm_fma::grouped_gemm_fma`], bf16 bits (`u16`) run [`gemm_mma::grouped_gemm_mma`].
pub trait GemmElem: Elem {
    /// Launches the kernel of this element type on `grid`.
    ///
    /// # Safety
    /// The operands of `p` point at live buffers of `l` covering the extents the dims imply.
    unsafe fn launch_gemm<L: Launcher>(l: &L, p: GroupedGemm<Self>, grid: Dim3) -> Result<(), LaunchError>;

    /// f32 values in this element type (bf16: rounded to nearest even).
    fn from_f32(x: &[f32]) -> Vec<Self>;
}

impl GemmElem for f32 {
    unsafe fn launch_gemm<L: Launcher>(l: &L, p: GroupedGemm<f32>, grid: Dim3) -> Result<(), LaunchError> {
        let dims = LaunchDims { grid, block: Dim3::x(gemm_fma::THREADS), shared_bytes: gemm_fma::SHARED_BYTES as u32 };
        // SAFETY: the caller's contract.
        unsafe { l.grouped_gemm_fma(dims, p) }
    }

    fn from_f32(x: &[f32]) -> Vec<f32> {
        x.to_vec()
    }
}

impl GemmElem for u16 {
    unsafe fn launch_gemm<L: Launcher>(l: &L, p: GroupedGemm<u16>, grid: Dim3) -> Result<(), LaunchError> {
        let contiguous = |rs: usize, cs: usize| rs == 1 || cs == 1;
        ensure(contiguous(p.a.rs, p.a.cs) && contiguous(p.b.rs, p.b.cs), || {
            "mma gemm: every operand must be contiguous along one axis".into()
        })?;
        let dims = LaunchDims { grid, block: Dim3::x(gemm_mma::THREADS), shared_bytes: gemm_mma::SHARED_BYTES as u32 };
        // SAFETY: the caller's contract.
        unsafe { l.grouped_gemm_mma(dims, p) }
    }

    fn from_f32(x: &[f32]) -> Vec<u16> {
        to_bf16(x)
    }
}

/// Runs a grouped GEMM over `groups` groups. `offsets` is the host copy of `p.offsets`
/// (`[groups + 1]`, needed when a dimension is [`TOKENS`]) from which the grid is sized.
///
/// # Safety
/// The operands' pointers are buffers of `l` covering the extents the dims imply.
pub unsafe fn grouped_gemm<L: Launcher, T: GemmElem>(
    l: &L,
    p: GroupedGemm<T>,
    offsets: Option<&[u32]>,
    groups: usize,
) -> Result<(), LaunchError> {
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
    // SAFETY: the caller's contract.
    unsafe { T::launch_gemm(l, p, grid) }
}

/// Whether a dense GEMM operand is stored transposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trans {
    /// Stored as used: `[rows, cols]` row-major.
    No,
    /// Stored transposed: `[cols, rows]` row-major.
    Yes,
}

/// A row-major matrix with `cols` stored columns, seen through `trans`, as a kernel operand.
fn dense_operand<T: Copy>(ptr: Gmem<T>, cols: usize, trans: Trans) -> Operand<T> {
    let (rs, cs) = match trans {
        Trans::No => (cols, 1),
        Trans::Yes => (1, cols),
    };
    Operand { ptr, rs, cs, group_stride: 0, offset: 0, axis: TokenAxis::None }
}

/// `c [M, N] (+)= op(a) · op(b)` with `op(a) [M, K]`, `op(b) [K, N]` (stored transposed when
/// `ta` / `tb` is [`Trans::Yes`]), as the grouped FMA GEMM with one group (with one group and no
/// dimension equal to [`TOKENS`] it is exactly a strided GEMM).
#[allow(clippy::too_many_arguments)]
pub fn matmul<L: Launcher>(
    l: &L,
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    ta: Trans,
    tb: Trans,
    accumulate: bool,
) -> Result<(), LaunchError> {
    ensure(c.len() == m * n && a.len() == m * k && b.len() == k * n, || {
        format!("gemm: lengths c {} a {} b {} do not match M={m} K={k} N={n}", c.len(), a.len(), b.len())
    })?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            c.fill(0.0);
        }
        return Ok(());
    }
    let (am, bm, cm) = (l.input(a)?, l.input(b)?, l.output(c, accumulate)?);
    // SAFETY: a, b, c hold M*K, K*N, M*N elements (checked).
    unsafe { matmul_dev(l, l.ptr(&cm), l.ptr(&am), l.ptr(&bm), (m, k, n), (ta, tb), accumulate) }?;
    l.read_back(&cm, c)
}

/// [`matmul`] on device buffers (`m, n, k > 0`).
///
/// # Safety
/// `c`, `a`, `b` are buffers of `l` holding `M*N`, `M*K`, `K*N` elements.
pub(crate) unsafe fn matmul_dev<L: Launcher>(
    l: &L,
    c: Gmem<f32>,
    a: Gmem<f32>,
    b: Gmem<f32>,
    (m, k, n): (usize, usize, usize),
    (ta, tb): (Trans, Trans),
    accumulate: bool,
) -> Result<(), LaunchError> {
    let a_cols = if ta == Trans::No { k } else { m };
    let b_cols = if tb == Trans::No { n } else { k };
    let p = GroupedGemm {
        a: dense_operand(a, a_cols, ta),
        b: dense_operand(b, b_cols, tb),
        c: dense_operand(c, n, Trans::No),
        m,
        n,
        k,
        offsets: Gmem::null(),
        accumulate,
    };
    // SAFETY: the caller's contract; the operands stride inside those extents.
    unsafe { grouped_gemm(l, p, None, 1) }
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

fn check(offsets: &[u32], experts: usize, d: usize, w: usize) -> Result<(usize, usize), LaunchError> {
    ensure(offsets.len() >= 2 && offsets.windows(2).all(|p| p[0] <= p[1]), || "experts: bad offsets".into())?;
    let e = offsets.len() - 1;
    ensure(d > 0 && w > 0 && experts == e * 3 * w * d, || "experts: weights are not [E, 3*W*D]".into())?;
    Ok((e, offsets[e] as usize))
}

/// Device copies of the token offsets: the pointer the kernels read and the host copy that sizes grids.
struct Offsets<'a, L: Launcher> {
    host: &'a [u32],
    mem: L::Mem,
}

impl<'a, L: Launcher> Offsets<'a, L> {
    fn new(l: &L, host: &'a [u32]) -> Result<Self, LaunchError> {
        Ok(Offsets { host, mem: l.input(host)? })
    }

    /// One grouped GEMM of the expert layer in element type `T`.
    ///
    /// # Safety
    /// The operands are buffers of `l` covering the expert layer's shapes for these offsets.
    unsafe fn gemm<T: GemmElem>(
        &self,
        l: &L,
        (a, b, c): (Operand<T>, Operand<T>, Operand<f32>),
        (m, n, k): (usize, usize, usize),
        accumulate: bool,
    ) -> Result<(), LaunchError> {
        let p = GroupedGemm { a, b, c, m, n, k, offsets: l.ptr(&self.mem), accumulate };
        // SAFETY: the caller's contract; the offsets are this buffer's.
        unsafe { grouped_gemm(l, p, Some(self.host), self.host.len() - 1) }
    }
}

/// Forward of every expert on its rows, as kernels-cpu `moe::experts::experts_forward`: per expert
/// `hgu = xp · guᵀ` (gate and up adjacent: `gu [2W, D]`), `a = silu(hg) * hu`, `y = a · downᵀ`.
/// Shapes: `y`, `xp` `[Nk, D]`; `hgu` `[Nk, 2W]` (each row gate then up); `a` `[Nk, W]`;
/// `experts` `[E, 3*W*D]` (per expert `gate_proj [W, D]`, `up_proj [W, D]`, `down_proj [D, W]`);
/// `offsets` `[E+1]`.
#[allow(clippy::too_many_arguments)]
pub fn experts_forward<L: Launcher>(
    l: &L,
    kind: ExpertsGemm,
    y: &mut [f32],
    hgu: &mut [f32],
    a: &mut [f32],
    xp: &[f32],
    experts: &[f32],
    offsets: &[u32],
    d: usize,
    w: usize,
) -> Result<(), LaunchError> {
    let (_, nk) = check(offsets, experts.len(), d, w)?;
    ensure(y.len() == nk * d && xp.len() == nk * d && hgu.len() == nk * 2 * w && a.len() == nk * w, || {
        "experts forward: activation shapes".into()
    })?;
    let io = Activations { y, hgu, a, offsets, d, w };
    match kind {
        ExpertsGemm::Fma => forward_t::<L, f32>(l, io, xp, experts),
        ExpertsGemm::MmaBf16 => forward_t::<L, u16>(l, io, &to_bf16(xp), &to_bf16(experts)),
    }
}

struct Activations<'a> {
    y: &'a mut [f32],
    hgu: &'a mut [f32],
    a: &'a mut [f32],
    offsets: &'a [u32],
    d: usize,
    w: usize,
}

fn forward_t<L: Launcher, T: GemmElem>(l: &L, io: Activations<'_>, xp: &[T], experts: &[T]) -> Result<(), LaunchError> {
    let (d, w) = (io.d, io.w);
    let nk = xp.len() / d;
    let off = Offsets::new(l, io.offsets)?;
    let (xm, wm) = (l.input(xp)?, l.input(experts)?);
    let (hm, am, ym) = (l.output(io.hgu, false)?, l.output(io.a, false)?, l.output(io.y, false)?);
    let wt = l.ptr::<T>(&wm);
    let xa = operand(l.ptr::<T>(&xm), d, 1, TokenAxis::Rows);
    let out = operand(l.ptr(&hm), 2 * w, 1, TokenAxis::Rows);
    // SAFETY: xp [Nk, D], experts [E, 3*W*D], hgu [Nk, 2W] (checked by the caller).
    unsafe { off.gemm(l, (xa, weight(wt, 1, d, w, d, 0), out), (TOKENS, 2 * w, d), false) }?;
    // SAFETY: a holds Nk*W and hgu Nk*2W elements.
    unsafe { l.swiglu_fused_forward(elementwise_dims(l, nk * w), l.ptr(&am), l.ptr(&hm), nk * w, w) }?;
    l.read_back(&am, io.a)?;
    let act = T::from_f32(io.a);
    let actm = l.input(&act)?;
    let aa = operand(l.ptr::<T>(&actm), w, 1, TokenAxis::Rows);
    let yo = operand(l.ptr(&ym), d, 1, TokenAxis::Rows);
    // SAFETY: act [Nk, W], y [Nk, D].
    unsafe { off.gemm(l, (aa, weight(wt, 1, w, w, d, 2 * w * d), yo), (TOKENS, d, w), false) }?;
    l.read_back(&hm, io.hgu)?;
    l.read_back(&ym, io.y)
}

/// Backward of [`experts_forward`], as kernels-cpu `moe::experts::experts_backward`: accumulates
/// `dxp [Nk, D]` and `dexperts [E, 3*W*D]` from `dy [Nk, D]` and the saved `hgu`, `a`.
#[allow(clippy::too_many_arguments)]
pub fn experts_backward<L: Launcher>(
    l: &L,
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
) -> Result<(), LaunchError> {
    let (_, nk) = check(offsets, experts.len(), d, w)?;
    ensure(dexperts.len() == experts.len(), || "experts backward: dexperts is not [E, 3*W*D]".into())?;
    ensure(
        dxp.len() == nk * d && dy.len() == nk * d && xp.len() == nk * d && hgu.len() == nk * 2 * w && a.len() == nk * w,
        || "experts backward: activation shapes".into(),
    )?;
    let g = Grads { dxp, dexperts, hgu, offsets, d, w };
    match kind {
        ExpertsGemm::Fma => backward_t::<L, f32>(l, g, dy, xp, a, experts),
        ExpertsGemm::MmaBf16 => backward_t::<L, u16>(l, g, &to_bf16(dy), &to_bf16(xp), &to_bf16(a), &to_bf16(experts)),
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

fn backward_t<L: Launcher, T: GemmElem>(
    l: &L,
    g: Grads<'_>,
    dy: &[T],
    xp: &[T],
    a: &[T],
    experts: &[T],
) -> Result<(), LaunchError> {
    let (d, w) = (g.d, g.w);
    let nk = xp.len() / d;
    let off = Offsets::new(l, g.offsets)?;
    let (dym, xm, am, wm, hm) = (l.input(dy)?, l.input(xp)?, l.input(a)?, l.input(experts)?, l.input(g.hgu)?);
    let (dxm, dem) = (l.output(g.dxp, true)?, l.output(g.dexperts, true)?);
    let (dyp, xpp, ap, wt) = (l.ptr::<T>(&dym), l.ptr::<T>(&xm), l.ptr::<T>(&am), l.ptr::<T>(&wm));
    let dexp = l.ptr::<f32>(&dem);
    // da = dy · down            [Nk, W]
    let dam = l.scratch::<f32>(nk * w)?;
    let dy_rows = operand(dyp, d, 1, TokenAxis::Rows);
    let da = operand(l.ptr(&dam), w, 1, TokenAxis::Rows);
    // SAFETY (every GEMM below): the operands are the buffers above, of the checked shapes.
    unsafe { off.gemm(l, (dy_rows, weight(wt, w, 1, w, d, 2 * w * d), da), (TOKENS, w, d), false) }?;
    // ddown += dyᵀ · a          [D, W]
    let dy_t = operand(dyp, 1, d, TokenAxis::Cols);
    let a_rows = operand(ap, w, 1, TokenAxis::Rows);
    unsafe { off.gemm(l, (dy_t, a_rows, weight(dexp, w, 1, w, d, 2 * w * d)), (d, w, TOKENS), true) }?;
    let mut dhgu = vec![0f32; nk * 2 * w];
    let dhm = l.output(&mut dhgu, true)?;
    // SAFETY: dhgu and hgu hold Nk*2W, da Nk*W elements.
    unsafe { l.swiglu_fused_backward(elementwise_dims(l, nk * w), l.ptr(&dhm), l.ptr(&dam), l.ptr(&hm), nk * w, w) }?;
    l.read_back(&dhm, &mut dhgu)?;
    let dhgu_t = T::from_f32(&dhgu);
    let dhtm = l.input(&dhgu_t)?;
    let dh = l.ptr::<T>(&dhtm);
    // dgu += dhguᵀ · xp         [2W, D]
    let xrows = operand(xpp, d, 1, TokenAxis::Rows);
    let dh_t = operand(dh, 1, 2 * w, TokenAxis::Cols);
    unsafe { off.gemm(l, (dh_t, xrows, weight(dexp, d, 1, w, d, 0)), (2 * w, d, TOKENS), true) }?;
    // dxp += dhgu · gu          [Nk, D]
    let dx = operand(l.ptr(&dxm), d, 1, TokenAxis::Rows);
    let dh_rows = operand(dh, 2 * w, 1, TokenAxis::Rows);
    unsafe { off.gemm(l, (dh_rows, weight(wt, d, 1, w, d, 0), dx), (TOKENS, d, 2 * w), true) }?;
    l.read_back(&dxm, g.dxp)?;
    l.read_back(&dem, g.dexperts)
}
