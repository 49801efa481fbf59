//! GPTQ and RTN against a float64 transcription of the reference `fasterquant`
//! (`tests/fixtures/gptq/algo.safetensors`, written by `tools/gen_gptq_fixtures.py --only algo`;
//! its doc lists the tensors and metadata).
//!
//! The fixture's inputs are multiples of 1/16 so `Xᵀ X` is exact in f32: our [`Hessian`] must equal
//! the script's bit for bit, and from there codes, `g_idx` and scales must match the reference.
//! Ties: both sides round half to even; the script counts the values that came within 1e-9 of a
//! rounding boundary (`ties_<case>`, the group maxima at ±maxq/2 mostly, which both compute with the
//! same operations), and this test requires every code equal, ties included.

use kernels_cpu::gptq::{gptq_quantize, output_error, rtn_quantize, GptqConfig, Hessian};
use safetensors::SafeTensors;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gptq/algo.safetensors");
const CASES: [(u32, usize, bool); 8] = [
    (4, 32, false),
    (4, 32, true),
    (4, 64, false),
    (4, 64, true),
    (4, 128, false),
    (4, 128, true),
    (8, 128, false),
    (8, 128, true),
];

struct Fixture {
    bytes: Vec<u8>,
}

impl Fixture {
    fn open() -> Self {
        Fixture { bytes: std::fs::read(FIXTURE).expect("fixture; regenerate with tools/gen_gptq_fixtures.py") }
    }

    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).unwrap()
    }

    fn raw(&self, name: &str) -> (Vec<usize>, Vec<u8>) {
        let st = self.st();
        let t = st.tensor(name).unwrap_or_else(|_| panic!("fixture tensor {name}"));
        (t.shape().to_vec(), t.data().to_vec())
    }

    fn f32s(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let (s, b) = self.raw(name);
        (s, b.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect())
    }

    fn i32s(&self, name: &str) -> Vec<u32> {
        self.raw(name).1.chunks(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as u32).collect()
    }

    fn meta(&self, key: &str) -> f64 {
        let (_, m) = SafeTensors::read_metadata(&self.bytes).unwrap();
        m.metadata().as_ref().and_then(|m| m.get(key)).unwrap_or_else(|| panic!("metadata {key}")).parse().unwrap()
    }

    /// `w [N, K]`, `x [T, K]`.
    fn inputs(&self) -> (Vec<f32>, usize, usize, Vec<f32>) {
        let (ws, w) = self.f32s("w");
        let x = self.raw("x_u8").1.iter().map(|&u| (u as f32 - 64.0) / 16.0).collect();
        (w, ws[0], ws[1], x)
    }
}

fn case_name(bits: u32, group: usize, act: bool) -> String {
    format!("b{bits}_g{group}_{}", if act { "ao" } else { "no" })
}

fn hessian(x: &[f32], k: usize) -> Vec<f64> {
    let mut h = Hessian::new(k);
    // Two batches of unequal size: accumulation order must not matter here (exact sums).
    h.add(&x[..100 * k]).unwrap();
    h.add(&x[100 * k..]).unwrap();
    h.finish()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-30)
}

#[test]
fn gptq_matches_the_reference_transcription() {
    let f = Fixture::open();
    let (w, n, k, x) = f.inputs();
    let h = hessian(&x, k);
    for (bits, group, act) in CASES {
        let case = case_name(bits, group, act);
        let (q, stats) = gptq_quantize(&w, n, k, &h, &GptqConfig::new(bits, group, act)).unwrap();
        let codes = f.raw(&format!("codes_{case}")).1;
        let mismatched = q.codes.iter().zip(&codes).filter(|(a, b)| a != b).count();
        assert_eq!(mismatched, 0, "{case}: {mismatched} of {} codes differ", codes.len());
        assert_eq!(q.g_idx, f.i32s(&format!("g_idx_{case}")), "{case}: g_idx");
        let (ss, scales) = f.f32s(&format!("scales_{case}"));
        assert_eq!(ss, [k / group, n], "{case}: scales shape");
        let worst = q.scales.iter().zip(&scales).map(|(&a, &b)| rel(a as f64, b as f64)).fold(0.0, f64::max);
        assert!(worst <= 1e-6, "{case}: scales differ by {worst:e} relative");
        assert_eq!(stats.dead_columns, 1, "{case}: column 5 is dead");
        let loss = f.meta(&format!("loss_{case}"));
        assert!(rel(stats.loss, loss) < 1e-9, "{case}: loss {} vs reference {loss}", stats.loss);
        let err = output_error(&w, &q.dequantize(), &h, k);
        eprintln!(
            "{case}: codes equal ({} ties in the reference), loss {:.6}",
            f.meta(&format!("ties_{case}")),
            stats.loss
        );
        if bits == 4 {
            let rtn = rtn_quantize(&w, n, k, &GptqConfig::new(bits, group, act)).unwrap();
            let rtn_err = output_error(&w, &rtn.dequantize(), &h, k);
            eprintln!("{case}: output error GPTQ {err:.6} <= RTN {rtn_err:.6}");
            assert!(err <= rtn_err, "{case}: GPTQ output error {err} > RTN {rtn_err}");
        }
    }
}

#[test]
fn hessian_is_exact_on_dyadic_inputs() {
    let f = Fixture::open();
    let (_, _, k, x) = f.inputs();
    let t = x.len() / k;
    let h = hessian(&x, k);
    // The reference: (Xᵀ X) in f64, times 2/T.
    let mut want = vec![0f64; k * k];
    for row in x.chunks(k) {
        for i in 0..k {
            for j in 0..k {
                want[i * k + j] += row[i] as f64 * row[j] as f64;
            }
        }
    }
    want.iter_mut().for_each(|v| *v *= 2.0 / t as f64);
    assert_eq!(h, want);
}

#[test]
fn rtn_matches_the_reference_transcription() {
    let f = Fixture::open();
    let (w, n, k, _) = f.inputs();
    for group in [32, 64, 128] {
        let q = rtn_quantize(&w, n, k, &GptqConfig::new(4, group, false)).unwrap();
        assert_eq!(q.codes, f.raw(&format!("rtn_codes_g{group}")).1, "rtn g{group}: codes");
        let (_, scales) = f.f32s(&format!("rtn_scales_g{group}"));
        assert_eq!(q.scales, scales, "rtn g{group}: scales");
        assert_eq!(q.g_idx, (0..k as u32).map(|c| c / group as u32).collect::<Vec<_>>());
    }
}
