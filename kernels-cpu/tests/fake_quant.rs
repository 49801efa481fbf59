//! The format-exact fake quantizer (`kernels_cpu::fake_quant`):
//! - its forward equals the dequantization of the GGUF blocks it encodes, bit for bit, for every
//!   format and group size, awkward rows included (zeros, tiny values, outliers, steps below the
//!   f16 range, negative mins, rows zero-padded to a longer stored row);
//! - its backward equals the element-by-element f64 reference, and the f64 finite differences of
//!   the straight-through surrogate (the LSQ / LSQ+ step and min gradients);
//! - forward and gradients equal torch's (lsq-net style autograd), from
//!   `tests/fixtures/fake_quant/lsq_ref.bin` (`tools/gen_fake_quant_fixtures.py`);
//! - min-max initialisation clips nothing; a format change keeps the clip range.

use kernels_cpu::check::{assert_close, finite_diff, rand_vec};
use kernels_cpu::fake_quant::{
    code_range, encode_rows, fake_quant_backward, fake_quant_forward, fake_quant_naive, grad_scale, init_minmax,
    init_mse, rescale_for_format, ste_surrogate_loss, FakeQuantDims, FakeQuantError,
};
use kernels_cpu::quant::{dequantize_rows, BlockType};

const FORMATS: [(BlockType, &[usize]); 5] = [
    (BlockType::Q8_0, &[32, 64, 128]),
    (BlockType::Q5_0, &[32, 64]),
    (BlockType::Q6_K, &[16, 32, 64, 128, 256]),
    (BlockType::Q5_1, &[32, 64]),
    (BlockType::Q5_K, &[32, 64, 128, 256]),
];

/// Weights with the awkward cases on some rows: zeros, tiny, outliers, a constant row.
fn weights(rows: usize, row_len: usize, seed: u64) -> Vec<f32> {
    let mut w: Vec<f32> = rand_vec(rows * row_len, seed).iter().map(|x| x * 0.05).collect();
    for (r, row) in w.chunks_exact_mut(row_len).enumerate() {
        match r % 6 {
            1 => row[..row_len / 2].fill(0.0),
            2 => row.iter_mut().for_each(|x| *x *= 1e-7),
            3 => {
                row[3] = 0.9;
                row[row_len - 5] = -1.3;
            }
            4 => row.fill(0.02),
            _ => {}
        }
    }
    w
}

/// Steps and mins around min-max, some below it (clipping), one tiny and one negative step, and
/// negative mins (Q5_K stores them as 0).
fn params(w: &[f32], dims: FakeQuantDims, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut s = vec![0f32; dims.params_len()];
    let mut m = vec![0f32; dims.min_len()];
    init_minmax(&mut s, &mut m, w, dims);
    let jitter = rand_vec(s.len(), seed);
    for (x, j) in s.iter_mut().zip(&jitter) {
        *x *= 0.85 + 0.3 * (j + 1.0) / 2.0;
    }
    if s.len() > 3 {
        s[1] = 1e-9;
        s[2] = -0.01;
    }
    for (k, x) in m.iter_mut().enumerate() {
        // Off min-max (which puts the group's minimum exactly on the bottom of the range).
        *x = if k % 7 == 3 { -0.01 } else { *x * 0.95 };
    }
    (s, m)
}

#[test]
fn forward_equals_the_dequantized_blocks_bit_for_bit() {
    for (ty, groups) in FORMATS {
        for &group in groups {
            for (rows, row_len, pad) in [(7, 256, 0), (6, 512, 256), (3, 768, 0)] {
                let dims = FakeQuantDims { ty, rows, row_len, group };
                let w = weights(rows, row_len, 11 + group as u64);
                let (s, m) = params(&w, dims, 5);
                let mut out = vec![0f32; w.len()];
                fake_quant_forward(&mut out, &w, &s, &m, dims);
                let stored = row_len + pad;
                let mut bytes = vec![0u8; rows * ty.row_bytes(stored).unwrap()];
                encode_rows(&mut bytes, &w, &s, &m, dims, stored).unwrap();
                let back = dequantize_rows(ty, &bytes, stored).unwrap();
                for r in 0..rows {
                    let got = &out[r * row_len..(r + 1) * row_len];
                    let want = &back[r * stored..r * stored + row_len];
                    for (i, (a, b)) in got.iter().zip(want).enumerate() {
                        assert_eq!(
                            a.to_bits(),
                            b.to_bits(),
                            "{ty} g{group} {rows}x{row_len}+{pad}: row {r} [{i}]: {a} vs {b}"
                        );
                    }
                    // The padding decodes to zeros (it multiplies zero activations in llama.cpp).
                    assert!(back[r * stored + row_len..(r + 1) * stored].iter().all(|&x| x == 0.0), "{ty} padding");
                }
            }
        }
    }
}

#[test]
fn partial_super_block_rows_match_their_padded_encoding() {
    // A K-quant row of 160 values (a shared expert of width 160) stored padded to 256.
    for (ty, group) in [(BlockType::Q5_K, 32), (BlockType::Q6_K, 16), (BlockType::Q6_K, 32)] {
        let dims = FakeQuantDims { ty, rows: 5, row_len: 160, group };
        let w = weights(5, 160, 3);
        let (s, m) = params(&w, dims, 9);
        let mut out = vec![0f32; w.len()];
        fake_quant_forward(&mut out, &w, &s, &m, dims);
        let mut bytes = vec![0u8; 5 * ty.row_bytes(256).unwrap()];
        encode_rows(&mut bytes, &w, &s, &m, dims, 256).unwrap();
        let back = dequantize_rows(ty, &bytes, 256).unwrap();
        for r in 0..5 {
            for i in 0..160 {
                assert_eq!(out[r * 160 + i].to_bits(), back[r * 256 + i].to_bits(), "{ty} row {r} [{i}]");
            }
        }
    }
}

#[test]
fn backward_matches_the_naive_reference() {
    for (ty, groups) in FORMATS {
        for &group in groups {
            let dims = FakeQuantDims { ty, rows: 5, row_len: 512, group };
            let w = weights(5, 512, 21);
            let (s, m) = params(&w, dims, 8);
            let dout = rand_vec(w.len(), 4);
            let naive = fake_quant_naive(&w, &s, &m, &dout, dims);
            let mut out = vec![0f32; w.len()];
            fake_quant_forward(&mut out, &w, &s, &m, dims);
            let want: Vec<f32> = naive.out.iter().map(|&x| x as f32).collect();
            assert_close(&out, &want, 1e-7, 1e-6, &format!("{ty} g{group} forward"));
            // Backward accumulates: start from ones and subtract them.
            let mut dw = vec![1f32; w.len()];
            let mut ds = vec![1f32; s.len()];
            let mut dm = vec![1f32; m.len()];
            fake_quant_backward(&mut dw, &mut ds, &mut dm, &dout, &w, &s, &m, dims);
            let minus_one = |v: &[f32]| v.iter().map(|x| x - 1.0).collect::<Vec<f32>>();
            let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
            assert_close(&minus_one(&dw), &f32s(&naive.dw), 1e-6, 1e-6, &format!("{ty} g{group} dw"));
            assert_close(&minus_one(&ds), &f32s(&naive.ds), 1e-5, 1e-4, &format!("{ty} g{group} ds"));
            assert_close(&minus_one(&dm), &f32s(&naive.dm), 1e-5, 1e-4, &format!("{ty} g{group} dm"));
            assert!(naive.ds.iter().any(|&x| x != 0.0), "{ty}: the step gradient is not trivially zero");
            if dims.has_min() {
                assert!(naive.dm.iter().any(|&x| x != 0.0), "{ty}: some weights clip below the range");
            }
        }
    }
}

#[test]
fn step_and_min_gradients_equal_finite_differences_of_the_surrogate() {
    for (ty, groups) in FORMATS {
        for &group in groups {
            let dims = FakeQuantDims { ty, rows: 2, row_len: 256, group };
            let w = weights(2, 256, 31);
            let (s, m) = params(&w, dims, 13);
            let r = rand_vec(w.len(), 17);
            let naive = fake_quant_naive(&w, &s, &m, &r, dims);
            let (w64, st, mn): (Vec<f64>, Vec<f64>, Vec<f64>) = (
                w.iter().map(|&x| x as f64).collect(),
                naive.steps.iter().map(|&x| x as f64).collect(),
                naive.mins.iter().map(|&x| x as f64).collect(),
            );
            // Groups with a live step and no weight on a clamp bound (the surrogate has a kink
            // there: zero groups sit exactly at u = 0, the bottom of the asymmetric range).
            let (lo, hi) = code_range(ty);
            let on_bound = |k: usize| {
                (k * group..(k + 1) * group).any(|i| {
                    let u = (w64[i] + mn[k]) / st[k];
                    (u - lo as f64).abs() < 1e-2 || (u - hi as f64).abs() < 1e-2
                })
            };
            let live: Vec<usize> = (0..st.len()).filter(|&k| st[k] > 0.0 && !on_bound(k)).collect();
            assert!(live.len() * 2 >= st.len(), "{ty} g{group}: only {} of {} groups checked", live.len(), st.len());
            let mut ds = vec![0f32; s.len()];
            let mut dm = vec![0f32; m.len()];
            let mut dw = vec![0f32; w.len()];
            fake_quant_backward(&mut dw, &mut ds, &mut dm, &r, &w, &s, &m, dims);
            let g = grad_scale(ty, group) as f64;
            // d/ds̃ by finite differences, one group at a time, with the cotangent of that group
            // alone (the surrogate is linear in s̃ away from the clamp bounds; a small total keeps
            // the f64 cancellation small).
            for &k in &live {
                let rk: Vec<f32> = r.iter().enumerate().map(|(i, &x)| if i / group == k { x } else { 0.0 }).collect();
                let h = (st[k] * 1e-5).max(1e-10);
                let f = |x: &[f64]| {
                    let mut steps = st.clone();
                    steps[k] = x[0];
                    ste_surrogate_loss(&w64, &steps, &mn, &w64, &st, &mn, &rk, dims)
                };
                let fd = finite_diff(f, &[st[k]], h)[0] * g;
                let err = (ds[k] as f64 - fd).abs();
                assert!(err <= 1e-4 * fd.abs().max(1e-3), "{ty} g{group} ds[{k}]: {} vs fd {fd}", ds[k]);
                if dims.has_min() {
                    let f = |x: &[f64]| {
                        let mut mins = mn.clone();
                        mins[k] = x[0];
                        ste_surrogate_loss(&w64, &st, &mins, &w64, &st, &mn, &rk, dims)
                    };
                    let fd = finite_diff(f, &[mn[k]], 1e-7)[0] * g;
                    let err = (dm[k] as f64 - fd).abs();
                    assert!(err <= 1e-4 * fd.abs().max(1e-3), "{ty} g{group} dm[{k}]: {} vs fd {fd}", dm[k]);
                }
            }
            // d/dw: 1 inside the range, 0 where clipped.
            let fdw = finite_diff(|x| ste_surrogate_loss(x, &st, &mn, &w64, &st, &mn, &r, dims), &w64, 1e-7);
            for (i, (&a, &b)) in dw.iter().zip(&fdw).enumerate() {
                if live.contains(&(i / group)) {
                    assert!((a as f64 - b).abs() <= 1e-4 * b.abs().max(1e-2), "{ty} g{group} dw[{i}]: {a} vs fd {b}");
                }
            }
        }
    }
}

#[test]
fn min_max_init_clips_nothing_and_a_format_change_keeps_the_range() {
    for (ty, groups) in FORMATS {
        let dims = FakeQuantDims { ty, rows: 4, row_len: 256, group: groups[0] };
        let w = weights(4, 256, 41);
        let mut s = vec![0f32; dims.params_len()];
        let mut m = vec![0f32; dims.min_len()];
        init_minmax(&mut s, &mut m, &w, dims);
        // Inside the range everywhere: the weight gradient is the cotangent itself. The
        // super-block double quantization may round a step down a little, so test the naive
        // group-local range (what min-max promises).
        let (lo, hi) = code_range(ty);
        for (i, &x) in w.iter().enumerate() {
            let k = i / dims.group;
            let mn = if dims.has_min() { m[k] } else { 0.0 };
            let u = (x + mn) / s[k];
            assert!(u >= lo as f32 - 1e-3 && u <= hi as f32 + 1e-3, "{ty}: w[{i}] = {x} outside the init range ({u})");
        }
        // MSE search never does worse than min-max.
        let mut s2 = s.clone();
        let mut m2 = m.clone();
        init_mse(&mut s2, &mut m2, &w, dims, &[1.0, 0.95, 0.9, 0.85, 0.8]);
        let err = |s: &[f32], m: &[f32]| -> f64 {
            let mut out = vec![0f32; w.len()];
            fake_quant_forward(&mut out, &w, s, m, dims);
            out.iter().zip(&w).map(|(a, b)| ((a - b) as f64).powi(2)).sum()
        };
        assert!(err(&s2, &m2) <= err(&s, &m) * 1.05, "{ty}: MSE clip search made it worse");
    }
    // Q8_0 -> Q6_K -> Q5_K keeps each group's positive bound; Q5_K covers the symmetric range.
    let s8 = vec![0.01f32, 0.002];
    let (s6, m6) = rescale_for_format(&s8, &[], BlockType::Q8_0, BlockType::Q6_K);
    assert!(m6.is_empty());
    assert!((s6[0] * 31.0 - 1.27).abs() < 1e-5, "{}", s6[0]);
    let (s5, m5) = rescale_for_format(&s6, &m6, BlockType::Q6_K, BlockType::Q5_K);
    assert!((m5[0] - 32.0 * s6[0]).abs() < 1e-6 && (s5[0] * 31.0 - m5[0] - 1.27).abs() < 1e-5, "{s5:?} {m5:?}");
}

#[test]
fn bad_layouts_are_errors() {
    let bad = [
        FakeQuantDims { ty: BlockType::Q4_K, rows: 1, row_len: 256, group: 32 },
        FakeQuantDims { ty: BlockType::Q5_K, rows: 1, row_len: 256, group: 16 },
        FakeQuantDims { ty: BlockType::Q6_K, rows: 1, row_len: 384, group: 384 },
        FakeQuantDims { ty: BlockType::Q8_0, rows: 1, row_len: 96, group: 64 },
        FakeQuantDims { ty: BlockType::Q8_0, rows: 1, row_len: 96, group: 0 },
    ];
    for d in bad {
        assert!(d.check().is_err(), "{d:?}");
    }
    let dims = FakeQuantDims { ty: BlockType::Q8_0, rows: 2, row_len: 64, group: 32 };
    let (w, s) = (vec![0.1f32; 128], vec![0.01f32; 4]);
    let mut bytes = vec![0u8; 2 * 68];
    assert!(matches!(encode_rows(&mut bytes, &w, &s[..3], &[], dims, 64), Err(FakeQuantError::Length { .. })));
    assert!(matches!(encode_rows(&mut bytes, &w, &s, &[], dims, 48), Err(FakeQuantError::Padding { .. })));
    assert!(matches!(encode_rows(&mut bytes[..10], &w, &s, &[], dims, 64), Err(FakeQuantError::Length { .. })));
}

// ---- torch fixture ----

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/fake_quant/lsq_ref.bin");

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        assert!(self.pos + n <= self.buf.len(), "fixture truncated at byte {}", self.pos);
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        s
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn f32s(&mut self, n: usize) -> Vec<f32> {
        self.take(4 * n).chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
    }
}

#[test]
fn forward_and_gradients_match_torch() {
    let buf = std::fs::read(FIXTURE).unwrap_or_else(|e| panic!("{FIXTURE}: {e}"));
    let mut r = Reader { buf: &buf, pos: 0 };
    assert_eq!(r.take(8), b"MMFQUANT", "{FIXTURE}: not a fake-quant fixture");
    assert_eq!(r.u32(), 1, "{FIXTURE}: fixture version");
    let n = r.u32() as usize;
    r.take(n);
    let cases = r.u32();
    assert!(cases >= 10);
    for _ in 0..cases {
        let ty = BlockType::from_ggml_type_id(r.u32()).expect("known type");
        let (group, rows, row_len) = (r.u32() as usize, r.u32() as usize, r.u32() as usize);
        let dims = FakeQuantDims { ty, rows, row_len, group };
        let (np, nm, nw) = (dims.params_len(), dims.min_len(), rows * row_len);
        let (w, s, m, dout) = (r.f32s(nw), r.f32s(np), r.f32s(nm), r.f32s(nw));
        let (want_out, want_dw, want_ds, want_dm) = (r.f32s(nw), r.f32s(nw), r.f32s(np), r.f32s(nm));
        let mut out = vec![0f32; nw];
        fake_quant_forward(&mut out, &w, &s, &m, dims);
        for (i, (a, b)) in out.iter().zip(&want_out).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{ty} g{group}: forward [{i}] {a} vs torch {b}");
        }
        let (mut dw, mut ds, mut dm) = (vec![0f32; nw], vec![0f32; np], vec![0f32; nm]);
        fake_quant_backward(&mut dw, &mut ds, &mut dm, &dout, &w, &s, &m, dims);
        assert_close(&dw, &want_dw, 1e-7, 1e-6, &format!("{ty} g{group} dw"));
        assert_close(&ds, &want_ds, 1e-5, 1e-4, &format!("{ty} g{group} ds"));
        assert_close(&dm, &want_dm, 1e-5, 1e-4, &format!("{ty} g{group} dm"));
    }
    assert_eq!(r.take(4), b"END\0");
}
