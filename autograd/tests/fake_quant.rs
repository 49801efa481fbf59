//! The `fake_quant` op: the kernels-cpu forward and gradients through the tape, the same on every
//! backend (the GPU backends run the host quantizer), and its input checks (non-finite steps or
//! mins, a min given to a symmetric format or missing for an asymmetric one).

use autograd::ops::{self, FakeQuantDims};
use autograd::{Device, Tape, Tensor};
use kernels_cpu::check::rand_vec;
use kernels_cpu::fake_quant::{fake_quant_backward, fake_quant_forward, init_minmax};
use kernels_cpu::quant::BlockType;

fn case(ty: BlockType) -> (FakeQuantDims, Vec<f32>, Vec<f32>, Vec<f32>) {
    let dims = FakeQuantDims { ty, rows: 3, row_len: 256, group: 32 };
    let w: Vec<f32> = rand_vec(3 * 256, 1).iter().map(|x| x * 0.1).collect();
    let mut s = vec![0f32; dims.params_len()];
    let mut m = vec![0f32; dims.min_len()];
    init_minmax(&mut s, &mut m, &w, dims);
    s.iter_mut().for_each(|x| *x *= 0.8); // some weights clip
    (dims, w, s, m)
}

/// Output and the gradients of `sum(ŵ · r)` through a tape on `device`.
fn run(device: Device, ty: BlockType) -> Vec<Vec<f32>> {
    let (dims, w, s, m) = case(ty);
    let tape = Tape::new_on(device).unwrap();
    let wt = tape.leaf(&Tensor::from_vec(w, &[3, 256]));
    let st = tape.leaf(&Tensor::from_vec(s, &[3, 8]));
    let mt = dims.has_min().then(|| tape.leaf(&Tensor::from_vec(m, &[3, 8])));
    let out = ops::fake_quant(&tape, &wt, &st, mt.as_ref(), dims).unwrap();
    let r = rand_vec(out.numel(), 7);
    let values = out.to_vec();
    let g = tape.backward_with(&out, &r);
    let mut all = vec![values, g.get(&wt).unwrap().to_vec(), g.get(&st).unwrap().to_vec()];
    if let Some(mt) = &mt {
        all.push(g.get(mt).unwrap().to_vec());
    }
    all
}

#[test]
fn op_equals_the_kernels_on_every_backend() {
    for ty in [BlockType::Q8_0, BlockType::Q6_K, BlockType::Q5_K, BlockType::Q5_1] {
        let (dims, w, s, m) = case(ty);
        let r = rand_vec(w.len(), 7);
        let mut out = vec![0f32; w.len()];
        fake_quant_forward(&mut out, &w, &s, &m, dims);
        let (mut dw, mut ds, mut dm) = (vec![0f32; w.len()], vec![0f32; s.len()], vec![0f32; m.len()]);
        fake_quant_backward(&mut dw, &mut ds, &mut dm, &r, &w, &s, &m, dims);
        let mut want = vec![out, dw, ds];
        if dims.has_min() {
            want.push(dm);
        }
        assert!(want[2].iter().any(|&x| x != 0.0), "{ty}: step gradient");
        for device in [Device::Cpu, Device::Sim] {
            let got = run(device, ty);
            assert_eq!(got.len(), want.len());
            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits()), "{device} {ty}: output {k} differs");
            }
        }
    }
}

#[test]
fn bad_parameters_are_errors() {
    let (dims, w, mut s, m) = case(BlockType::Q5_K);
    let tape = Tape::new();
    let wt = Tensor::from_vec(w.clone(), &[3, 256]);
    let mt = Tensor::from_vec(m, &[3, 8]);
    s[5] = f32::NAN;
    let st = Tensor::from_vec(s.clone(), &[3, 8]);
    let e = ops::fake_quant(&tape, &wt, &st, Some(&mt), dims).unwrap_err().to_string();
    assert!(e.contains("group 5 of row 0") && e.contains("NaN"), "{e}");
    s[5] = 0.01;
    let st = Tensor::from_vec(s.clone(), &[3, 8]);
    let e = ops::fake_quant(&tape, &wt, &st, None, dims).unwrap_err().to_string();
    assert!(e.contains("needs a min"), "{e}");
    let q8 = FakeQuantDims { ty: BlockType::Q8_0, ..dims };
    let e = ops::fake_quant(&tape, &wt, &st, Some(&mt), q8).unwrap_err().to_string();
    assert!(e.contains("takes no min"), "{e}");
    let e = ops::fake_quant(&tape, &wt, &Tensor::from_vec(vec![0.1; 5], &[5]), None, q8).unwrap_err().to_string();
    assert!(e.contains("step"), "{e}");
    let q4 = FakeQuantDims { ty: BlockType::Q4_K, ..dims };
    assert!(ops::fake_quant(&tape, &wt, &st, None, q4).is_err());
}
