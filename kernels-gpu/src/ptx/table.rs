// The one table of GPU entry points (STYLE rule 5), `include!`d by `ptx/entries.rs` (defines the
// `extern "ptx-kernel"` shims), `host/names.rs` (the `Kernel` enum and symbol names) and `host/cuda.rs`
// (one launcher per row). Row: `Variant launcher symbol = kernel_path => (params the kernel takes after ctx);`
// Add a row when a kernel is added to src/kernels/, then run tools/build_ptx.sh.
macro_rules! for_each_kernel {
    ($m:ident) => {
        $m! {
            SimtSelftest simt_selftest medmoe_simt_selftest = crate::kernels::selftest::simt_selftest => (out: Gmem<u32>, a: Gmem<u16>, b: Gmem<u16>, x: Gmem<f32>, acc: Gmem<f32>, cnt: Gmem<u32>);
            AdamwStep adamw_step medmoe_adamw_step = crate::kernels::adamw::adamw_step => (param: Gmem<f32>, grad: Gmem<f32>, m: Gmem<f32>, v: Gmem<f32>, k: crate::kernels::adamw::AdamWScalars, len: usize);
            SoftmaxCeForwardBackward softmax_ce_forward_backward medmoe_softmax_ce_forward_backward = crate::kernels::cross_entropy::softmax_ce_forward_backward => (losses: Gmem<f32>, dlogits: Gmem<f32>, logits: Gmem<f32>, targets: Gmem<i32>, n: usize, v: usize, scale: f32);
            DistillKlForwardBackward distill_kl_forward_backward medmoe_distill_kl_forward_backward = crate::kernels::distill::distill_kl_forward_backward => (kl: Gmem<f32>, dzs: Gmem<f32>, zs: Gmem<f32>, zt: Gmem<f32>, targets: Gmem<i32>, n: usize, v: usize, inv_tau: f32, gscale: f32, want_grad: u32);
            HiddenL2Forward hidden_l2_forward medmoe_hidden_l2_forward = crate::kernels::distill::hidden_l2_forward => (out: Gmem<f32>, hs: Gmem<f32>, ht: Gmem<f32>, targets: Gmem<i32>, n: usize, d: usize);
            HiddenL2Backward hidden_l2_backward medmoe_hidden_l2_backward = crate::kernels::distill::hidden_l2_backward => (dhs: Gmem<f32>, dout: Gmem<f32>, hs: Gmem<f32>, ht: Gmem<f32>, d: usize, len: usize);
            FakeQuantForward fake_quant_forward medmoe_fake_quant_forward = crate::kernels::fake_quant::fake_quant_forward => (y: Gmem<f32>, w: Gmem<f32>, clip: Gmem<f32>, len: usize, group: usize, qmax: f32);
            FakeQuantBackward fake_quant_backward medmoe_fake_quant_backward = crate::kernels::fake_quant::fake_quant_backward => (dw: Gmem<f32>, dclip: Gmem<f32>, dy: Gmem<f32>, w: Gmem<f32>, clip: Gmem<f32>, len: usize, group: usize, qmax: f32, grad_scale: f32);
            GroupedGemmFma grouped_gemm_fma medmoe_grouped_gemm_fma = crate::kernels::gemm_fma::grouped_gemm_fma => (p: crate::kernels::gemm::GroupedGemm<f32>);
            GroupedGemmMma grouped_gemm_mma medmoe_grouped_gemm_mma = crate::kernels::gemm_mma::grouped_gemm_mma => (p: crate::kernels::gemm::GroupedGemm<u16>);
            SortByExpert sort_by_expert medmoe_sort_by_expert = crate::kernels::permute::sort_by_expert => (order: Gmem<u32>, offsets: Gmem<u32>, inv: Gmem<u32>, expert_of_token: Gmem<u32>, n: usize, e: usize);
            GatherForward gather_forward medmoe_gather_forward = crate::kernels::permute::gather_forward => (xp: Gmem<f32>, x: Gmem<f32>, order: Gmem<u32>, offsets: Gmem<u32>, e: usize, d: usize);
            GatherBackward gather_backward medmoe_gather_backward = crate::kernels::permute::gather_backward => (dx: Gmem<f32>, dxp: Gmem<f32>, inv: Gmem<u32>, n: usize, d: usize);
            CombineForward combine_forward medmoe_combine_forward = crate::kernels::permute::combine_forward => (out: Gmem<f32>, yp: Gmem<f32>, weights: Gmem<f32>, inv: Gmem<u32>, n: usize, d: usize);
            CombineBackward combine_backward medmoe_combine_backward = crate::kernels::permute::combine_backward => (dyp: Gmem<f32>, dweights: Gmem<f32>, dout: Gmem<f32>, yp: Gmem<f32>, weights: Gmem<f32>, order: Gmem<u32>, offsets: Gmem<u32>, e: usize, d: usize);
            RmsnormForward rmsnorm_forward medmoe_rmsnorm_forward = crate::kernels::rmsnorm::rmsnorm_forward => (out: Gmem<f32>, rstd: Gmem<f32>, x: Gmem<f32>, w: Gmem<f32>, n: usize, c: usize, eps: f32);
            RmsnormBackwardDx rmsnorm_backward_dx medmoe_rmsnorm_backward_dx = crate::kernels::rmsnorm::rmsnorm_backward_dx => (dx: Gmem<f32>, dout: Gmem<f32>, x: Gmem<f32>, w: Gmem<f32>, rstd: Gmem<f32>, n: usize, c: usize);
            RmsnormBackwardDw rmsnorm_backward_dw medmoe_rmsnorm_backward_dw = crate::kernels::rmsnorm::rmsnorm_backward_dw => (dw: Gmem<f32>, dout: Gmem<f32>, x: Gmem<f32>, rstd: Gmem<f32>, n: usize, c: usize);
            RouterForward router_forward medmoe_router_forward = crate::kernels::router::router_forward => (probs: Gmem<f32>, choice: Gmem<u32>, lse: Gmem<f32>, entropy: Gmem<f32>, counts: Gmem<u32>, prob_sum: Gmem<f32>, lse2_sum: Gmem<f32>, logits: Gmem<f32>, noise: Gmem<f32>, bias: Gmem<f32>, n: usize, e: usize, inv_temp: f32, sigmoid_mode: u32);
            RouterBackward router_backward medmoe_router_backward = crate::kernels::router::router_backward => (dlogits: Gmem<f32>, dgate: Gmem<f32>, expert_of_token: Gmem<u32>, lb_coeff: Gmem<f32>, probs: Gmem<f32>, logits: Gmem<f32>, lse: Gmem<f32>, n: usize, e: usize, inv_temp: f32, z_scale: f32, sigmoid_mode: u32);
            SwigluForward swiglu_forward medmoe_swiglu_forward = crate::kernels::swiglu::swiglu_forward => (out: Gmem<f32>, gate: Gmem<f32>, up: Gmem<f32>, len: usize);
            SwigluBackward swiglu_backward medmoe_swiglu_backward = crate::kernels::swiglu::swiglu_backward => (dgate: Gmem<f32>, dup: Gmem<f32>, dout: Gmem<f32>, gate: Gmem<f32>, up: Gmem<f32>, len: usize);
            SwigluFusedForward swiglu_fused_forward medmoe_swiglu_fused_forward = crate::kernels::swiglu::swiglu_fused_forward => (out: Gmem<f32>, gu: Gmem<f32>, len: usize, f: usize);
            SwigluFusedBackward swiglu_fused_backward medmoe_swiglu_fused_backward = crate::kernels::swiglu::swiglu_fused_backward => (dgu: Gmem<f32>, dout: Gmem<f32>, gu: Gmem<f32>, len: usize, f: usize);
            RopeForward rope_forward medmoe_rope_forward = crate::kernels::rope::rope_forward => (out: Gmem<f32>, x: Gmem<f32>, pos: Gmem<u32>, cos: Gmem<f32>, sin: Gmem<f32>, n: usize, heads: usize, dh: usize, max_pos: usize);
            RopeBackward rope_backward medmoe_rope_backward = crate::kernels::rope::rope_backward => (dx: Gmem<f32>, dout: Gmem<f32>, pos: Gmem<u32>, cos: Gmem<f32>, sin: Gmem<f32>, n: usize, heads: usize, dh: usize, max_pos: usize);
            EmbeddingForward embedding_forward medmoe_embedding_forward = crate::kernels::embedding::embedding_forward => (out: Gmem<f32>, ids: Gmem<u32>, table: Gmem<f32>, n: usize, d: usize, v: usize);
            EmbeddingSortIds embedding_sort_ids medmoe_embedding_sort_ids = crate::kernels::embedding::embedding_sort_ids => (order: Gmem<u32>, ids: Gmem<u32>, n: usize);
            EmbeddingBackward embedding_backward medmoe_embedding_backward = crate::kernels::embedding::embedding_backward => (dtable: Gmem<f32>, dout: Gmem<f32>, ids: Gmem<u32>, order: Gmem<u32>, n: usize, d: usize, v: usize);
            AttentionForward attention_forward medmoe_attention_forward = crate::kernels::attention::attention_forward => (out: Gmem<f32>, lse: Gmem<f32>, q: Gmem<f32>, k: Gmem<f32>, v: Gmem<f32>, seg: Gmem<u32>, t: usize, h: usize, kv: usize, dh: usize, scale: f32);
            AttentionBackwardDvec attention_backward_dvec medmoe_attention_backward_dvec = crate::kernels::attention::attention_backward_dvec => (dvec: Gmem<f32>, dout: Gmem<f32>, out: Gmem<f32>, b: usize, t: usize, h: usize, dh: usize);
            AttentionBackwardDq attention_backward_dq medmoe_attention_backward_dq = crate::kernels::attention::attention_backward_dq => (dq: Gmem<f32>, dout: Gmem<f32>, lse: Gmem<f32>, dvec: Gmem<f32>, q: Gmem<f32>, k: Gmem<f32>, v: Gmem<f32>, seg: Gmem<u32>, t: usize, h: usize, kv: usize, dh: usize, scale: f32);
            AttentionBackwardDkv attention_backward_dkv medmoe_attention_backward_dkv = crate::kernels::attention::attention_backward_dkv => (dk: Gmem<f32>, dv: Gmem<f32>, dout: Gmem<f32>, lse: Gmem<f32>, dvec: Gmem<f32>, q: Gmem<f32>, k: Gmem<f32>, v: Gmem<f32>, seg: Gmem<u32>, t: usize, h: usize, kv: usize, dh: usize, scale: f32);
            AddScaled add_scaled medmoe_add_scaled = crate::kernels::elementwise::add_scaled => (out: Gmem<f32>, a: Gmem<f32>, b: Gmem<f32>, scale: f32, len: usize);
            CopyCols copy_cols medmoe_copy_cols = crate::kernels::elementwise::copy_cols => (out: Gmem<f32>, x: Gmem<f32>, cols: usize, start: usize, width: usize, len: usize);
            AddCols add_cols medmoe_add_cols = crate::kernels::elementwise::add_cols => (dx: Gmem<f32>, dy: Gmem<f32>, cols: usize, start: usize, width: usize, len: usize);
        }
    };
}
