//! GPTQ tensor packing (AutoGPTQ `qlinear` layout, `checkpoint_format: "gptq"`), for `W [N, K]`,
//! `b` bits, `p = 32 / b` codes per i32:
//! - `qweight` i32 `[K/p, N]`: code `q[n, k]` in bits `b·(k % p)` of `qweight[k / p, n]`;
//! - `qzeros` i32 `[K/G, N/p]`: packed the same way along N, holding `zero - 1` (the v1 format;
//!   symmetric 4-bit stores 7 → 0x77777777, 8-bit 127 → 0x7F7F7F7F);
//! - `scales` f16 `[K/G, N]`, `g_idx` i32 `[K]`;
//! - `W[n, k] = scales[g_idx[k], n] · (q[n, k] - (stored_zero[g_idx[k], n] + 1))`.

use crate::error::{ModelError, Result};
use kernels_cpu::gptq::QuantizedMatrix;

/// Codes per 32-bit word, checking that `bits` packs evenly (2, 4, 8).
pub fn per_word(bits: u32) -> Result<usize> {
    match bits {
        2 | 4 | 8 => Ok(32 / bits as usize),
        _ => Err(ModelError::Unsupported(format!("{bits}-bit GPTQ packing (2, 4 or 8 bits pack into i32 words)"))),
    }
}

/// `qweight [K/p, N]` of `m`.
pub fn pack_qweight(m: &QuantizedMatrix) -> Result<Vec<i32>> {
    let p = per_word(m.bits)?;
    let (n, k) = (m.rows, m.cols);
    if !k.is_multiple_of(p) {
        return Err(ModelError::Invalid(format!("{k} input columns do not pack into words of {p} codes")));
    }
    let mut out = vec![0u32; (k / p) * n];
    for r in 0..n {
        for c in 0..k {
            out[(c / p) * n + r] |= (m.codes[r * k + c] as u32) << (m.bits as usize * (c % p));
        }
    }
    Ok(out.into_iter().map(|w| w as i32).collect())
}

/// `qzeros [groups, N/p]` with every stored zero `zero - 1`.
pub fn pack_qzeros(zero: u32, bits: u32, groups: usize, n: usize) -> Result<Vec<i32>> {
    let p = per_word(bits)?;
    if !n.is_multiple_of(p) {
        return Err(ModelError::Invalid(format!(
            "{n} output rows do not pack into qzeros words of {p} (GPTQ needs N divisible by {p})"
        )));
    }
    let word = (0..p).fold(0u32, |w, i| w | ((zero - 1) << (bits as usize * i)));
    Ok(vec![word as i32; groups * n / p])
}

/// Codes `[N, K]` from `qweight [K/p, N]`.
pub fn unpack_qweight(qweight: &[i32], bits: u32, n: usize, k: usize) -> Result<Vec<u8>> {
    let p = per_word(bits)?;
    let mask = (1u32 << bits) - 1;
    let mut codes = vec![0u8; n * k];
    for r in 0..n {
        for c in 0..k {
            codes[r * k + c] = ((qweight[(c / p) * n + r] as u32 >> (bits as usize * (c % p))) & mask) as u8;
        }
    }
    Ok(codes)
}

/// Zero points `[groups, N]` (stored value + 1) from `qzeros [groups, N/p]`.
pub fn unpack_qzeros(qzeros: &[i32], bits: u32, groups: usize, n: usize) -> Result<Vec<u32>> {
    let p = per_word(bits)?;
    let mask = (1u32 << bits) - 1;
    let cols = n / p;
    Ok((0..groups * n)
        .map(|i| {
            let (g, r) = (i / n, i % n);
            ((qzeros[g * cols + r / p] as u32 >> (bits as usize * (r % p))) & mask) + 1
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_round_trips_and_sym_zeros_are_canonical() {
        for bits in [4u32, 8] {
            let (n, k) = (8, 64);
            let codes: Vec<u8> = (0..n * k).map(|i| ((i * 7 + i / 5) % (1 << bits)) as u8).collect();
            let m = QuantizedMatrix {
                rows: n,
                cols: k,
                bits,
                group: 32,
                codes: codes.clone(),
                scales: vec![1.0; 2 * n],
                g_idx: (0..k as u32).map(|c| c / 32).collect(),
            };
            let qw = pack_qweight(&m).unwrap();
            assert_eq!(qw.len(), k / (32 / bits as usize) * n);
            assert_eq!(unpack_qweight(&qw, bits, n, k).unwrap(), codes);
            let qz = pack_qzeros(m.zero(), bits, 2, n).unwrap();
            let want = if bits == 4 { 0x7777_7777u32 } else { 0x7F7F_7F7F };
            assert!(qz.iter().all(|&w| w as u32 == want));
            assert!(unpack_qzeros(&qz, bits, 2, n).unwrap().iter().all(|&z| z == m.zero()));
        }
        // Element (n=1, k=9) of 4-bit codes sits in word k/8 = 1, row 1, bits 4..8.
        let mut codes = vec![0u8; 2 * 16];
        codes[16 + 9] = 0xA;
        let m =
            QuantizedMatrix { rows: 2, cols: 16, bits: 4, group: 16, codes, scales: vec![1.0; 2], g_idx: vec![0; 16] };
        assert_eq!(pack_qweight(&m).unwrap(), vec![0, 0, 0, 0xA0]);
        assert!(pack_qzeros(8, 4, 1, 12).is_err());
        assert!(per_word(5).is_err());
    }
}
