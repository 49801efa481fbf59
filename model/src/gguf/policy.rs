//! llama-quantize's per-tensor type policy (`src/llama-quant.cpp`, no importance matrix), for the
//! file types we write. What a GGUF from `convert_hf_to_gguf.py --outtype f32|f16|bf16` followed by
//! `llama-quantize <type>` would hold, tensor by tensor:
//!
//! - Never quantized (F32): 1-D tensors, `*_norm.weight`, the router `ffn_gate_inp.weight`, and
//!   anything not ending in `weight` (`exp_probs_b.bias`).
//! - F32 / F16 / BF16 files: every other tensor in that type.
//! - Quantized files start from the type's default block type, then:
//!   - `output.weight` (or `token_embd.weight` when the file has no `output.weight`: tied) → Q6_K,
//!     except Q8_0 files and rows that are not a multiple of the default type's block (→ Q8_0);
//!   - Q4_K_M / Q5_K_M: `attn_v` and `ffn_down*` → Q6_K on layers where `use_more_bits(i, n)`
//!     (`i < n/8 || i >= 7n/8 || (i - n/8) % 3 == 2`); Q4_K_M with 8 experts: `attn_output` → Q5_K;
//!   - models with exactly 8 experts: `attn_v`, `attn_k` → Q8_0;
//!   - a row length that is not a multiple of the chosen type's block falls back: Q4_K→Q5_0,
//!     Q5_K→Q5_1, Q6_K→Q8_0, and to F16 when even 32 does not divide it. The fallback is reported.

use kernels_cpu::quant::BlockType;

/// A GGUF file type (`--type`): what `llama-quantize` calls an ftype.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgufType {
    /// All F32.
    F32,
    /// F16 weights.
    F16,
    /// BF16 weights.
    BF16,
    /// Q8_0.
    Q8_0,
    /// Q6_K.
    Q6_K,
    /// Q5_K with Q6_K on sensitive tensors.
    Q5_K_M,
    /// Q5_K.
    Q5_K_S,
    /// Q5_0.
    Q5_0,
    /// Q4_K with Q6_K on sensitive tensors.
    Q4_K_M,
}

impl GgufType {
    /// Every file type, in `--type` order.
    pub const ALL: [GgufType; 9] = [
        GgufType::F32,
        GgufType::F16,
        GgufType::BF16,
        GgufType::Q8_0,
        GgufType::Q6_K,
        GgufType::Q5_K_M,
        GgufType::Q5_K_S,
        GgufType::Q5_0,
        GgufType::Q4_K_M,
    ];

    /// The `--type` spelling (`q5_k_m`).
    pub fn name(self) -> &'static str {
        match self {
            GgufType::F32 => "f32",
            GgufType::F16 => "f16",
            GgufType::BF16 => "bf16",
            GgufType::Q8_0 => "q8_0",
            GgufType::Q6_K => "q6_k",
            GgufType::Q5_K_M => "q5_k_m",
            GgufType::Q5_K_S => "q5_k_s",
            GgufType::Q5_0 => "q5_0",
            GgufType::Q4_K_M => "q4_k_m",
        }
    }

    /// The type spelled `s` (ASCII case ignored).
    pub fn from_name(s: &str) -> Option<GgufType> {
        GgufType::ALL.into_iter().find(|t| t.name().eq_ignore_ascii_case(s))
    }

    /// `general.file_type` (llama.cpp's `llama_ftype`).
    pub fn file_type(self) -> u32 {
        match self {
            GgufType::F32 => 0,
            GgufType::F16 => 1,
            GgufType::Q8_0 => 7,
            GgufType::Q5_0 => 8,
            GgufType::Q4_K_M => 15,
            GgufType::Q5_K_S => 16,
            GgufType::Q5_K_M => 17,
            GgufType::Q6_K => 18,
            GgufType::BF16 => 32,
        }
    }

    /// The block type most tensors get (`llama_ftype_get_default_type`).
    pub fn default_block(self) -> BlockType {
        match self {
            GgufType::F32 => BlockType::F32,
            GgufType::F16 => BlockType::F16,
            GgufType::BF16 => BlockType::BF16,
            GgufType::Q8_0 => BlockType::Q8_0,
            GgufType::Q6_K => BlockType::Q6_K,
            GgufType::Q5_K_M | GgufType::Q5_K_S => BlockType::Q5_K,
            GgufType::Q5_0 => BlockType::Q5_0,
            GgufType::Q4_K_M => BlockType::Q4_K,
        }
    }
}

/// Whether llama-quantize would quantize a tensor at all (else it stays F32).
pub fn quantizable(name: &str, ne: &[usize]) -> bool {
    ne.len() >= 2 && name.ends_with("weight") && !name.contains("_norm.weight") && !name.contains("ffn_gate_inp.weight")
}

/// What the policy needs to know about the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelFacts {
    /// Decoder layers.
    pub n_layer: usize,
    /// Routed experts (0 for dense).
    pub n_expert: usize,
    /// Whether the file holds `output.weight` (else `token_embd` doubles as the LM head).
    pub has_output: bool,
}

/// The type chosen for one tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    /// The type written.
    pub ty: BlockType,
    /// The type the policy wanted when the row length forced a fallback.
    pub fallback_from: Option<BlockType>,
}

fn use_more_bits(i: usize, n: usize) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i as i64 - (n / 8) as i64).rem_euclid(3) == 2
}

fn is_quantized(t: BlockType) -> bool {
    !matches!(t, BlockType::F32 | BlockType::F16 | BlockType::BF16)
}

/// The type of tensor `name` (dims `ne`, layer `layer`) in a `ftype` file, or why none fits.
pub fn choose(
    ftype: GgufType,
    name: &str,
    ne: &[usize],
    layer: Option<usize>,
    m: &ModelFacts,
) -> Result<Choice, String> {
    if !quantizable(name, ne) {
        return Ok(Choice { ty: BlockType::F32, fallback_from: None });
    }
    let default = ftype.default_block();
    if !is_quantized(default) {
        return Ok(Choice { ty: default, fallback_from: None });
    }
    let nx = ne[0];
    let i = layer.unwrap_or(0);
    let mut ty = default;
    let more_bits = matches!(ftype, GgufType::Q4_K_M | GgufType::Q5_K_M) && use_more_bits(i, m.n_layer);
    if name == "output.weight" || (!m.has_output && name == "token_embd.weight") {
        if !nx.is_multiple_of(default.block_size()) {
            ty = BlockType::Q8_0;
        } else if ty != BlockType::Q8_0 {
            ty = BlockType::Q6_K;
        }
    } else if name == "token_embd.weight" {
        // The default type (no rule for our file types).
    } else if name.contains("attn_v.weight") {
        if more_bits {
            ty = BlockType::Q6_K;
        }
        if m.n_expert == 8 {
            ty = BlockType::Q8_0;
        }
    } else if name.contains("attn_k.weight") {
        if m.n_expert == 8 {
            ty = BlockType::Q8_0;
        }
    } else if name.contains("attn_output.weight") {
        if m.n_expert == 8 && ftype == GgufType::Q4_K_M {
            ty = BlockType::Q5_K;
        }
    } else if name.contains("ffn_down") && more_bits {
        ty = BlockType::Q6_K;
    }
    fallback(ty, nx).map_err(|msg| format!("tensor `{name}` (row length {nx}): {msg}"))
}

/// `ty`, or llama-quantize's fallback when rows of `nx` values cannot be stored as `ty`.
pub fn fallback(ty: BlockType, nx: usize) -> Result<Choice, String> {
    if nx.is_multiple_of(ty.block_size()) {
        return Ok(Choice { ty, fallback_from: None });
    }
    let mut to = match ty {
        BlockType::Q4_K => BlockType::Q5_0,
        BlockType::Q5_K => BlockType::Q5_1,
        BlockType::Q6_K => BlockType::Q8_0,
        other => return Err(format!("{other} needs rows that are a multiple of {}", other.block_size())),
    };
    if !nx.is_multiple_of(to.block_size()) {
        to = BlockType::F16;
    }
    Ok(Choice { ty: to, fallback_from: Some(ty) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DENSE28: ModelFacts = ModelFacts { n_layer: 28, n_expert: 0, has_output: false };

    #[test]
    fn use_more_bits_matches_llama_cpp_for_28_layers() {
        // n/8 = 3, 7n/8 = 24: layers 0-2, 24-27, and 3 + 2 + 3k.
        let got: Vec<usize> = (0..28).filter(|&i| use_more_bits(i, 28)).collect();
        assert_eq!(got, vec![0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26, 27]);
    }

    #[test]
    fn q5_k_m_bumps_and_fallbacks() {
        let c = |name: &str, ne: &[usize], l| choose(GgufType::Q5_K_M, name, ne, Some(l), &DENSE28).unwrap();
        assert_eq!(c("blk.0.attn_v.weight", &[2048, 1024], 0).ty, BlockType::Q6_K);
        assert_eq!(c("blk.3.attn_v.weight", &[2048, 1024], 3).ty, BlockType::Q5_K);
        assert_eq!(c("blk.5.ffn_down_exps.weight", &[512, 2048, 16], 5).ty, BlockType::Q6_K);
        let f = c("blk.5.ffn_down_exps.weight", &[192, 2048, 16], 5);
        assert_eq!((f.ty, f.fallback_from), (BlockType::Q8_0, Some(BlockType::Q6_K)));
        let f = c("blk.4.ffn_down_exps.weight", &[192, 2048, 16], 4);
        assert_eq!((f.ty, f.fallback_from), (BlockType::Q5_1, Some(BlockType::Q5_K)));
        assert_eq!(c("token_embd.weight", &[2048, 151936], 0).ty, BlockType::Q6_K);
        assert_eq!(c("blk.0.ffn_gate_inp.weight", &[2048, 16], 0).ty, BlockType::F32);
        assert_eq!(c("blk.0.attn_norm.weight", &[2048], 0).ty, BlockType::F32);
        let untied = ModelFacts { has_output: true, ..DENSE28 };
        let t = choose(GgufType::Q5_K_M, "token_embd.weight", &[2048, 100], None, &untied).unwrap();
        assert_eq!(t.ty, BlockType::Q5_K);
        let q8 = choose(GgufType::Q8_0, "output.weight", &[2048, 100], None, &untied).unwrap();
        assert_eq!(q8.ty, BlockType::Q8_0);
        let f16 = choose(GgufType::Q5_K_S, "blk.0.ffn_down.weight", &[100, 8], Some(0), &DENSE28).unwrap();
        assert_eq!(f16.ty, BlockType::F16);
        assert!(choose(GgufType::Q8_0, "blk.0.ffn_down.weight", &[100, 8], Some(0), &DENSE28).is_err());
        let bf = choose(GgufType::BF16, "blk.0.ffn_down.weight", &[100, 8], Some(0), &DENSE28).unwrap();
        assert_eq!(bf.ty, BlockType::BF16);
        let eight = ModelFacts { n_expert: 8, ..DENSE28 };
        let k = choose(GgufType::Q5_0, "blk.3.attn_k.weight", &[2048, 1024], Some(3), &eight).unwrap();
        assert_eq!(k.ty, BlockType::Q8_0);
        assert_eq!(GgufType::from_name("Q5_K_M"), Some(GgufType::Q5_K_M));
        assert_eq!(GgufType::from_name("q5_k"), None);
    }
}
