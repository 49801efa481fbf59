#!/usr/bin/env python3
"""PyTorch/transformers training-step reference for `moe-cli bench step`.

Builds a transformers model (float32, eager attention, CPU) for a preset, then times full training
steps on random token batches: forward with labels + backward + AdamW step + zero_grad.
--precision bf16 runs the forward (and so the backward of its ops) under
torch.autocast("cpu", dtype=torch.bfloat16): matmuls / linears with bf16 operands (oneDNN, AMX where
the CPU has it), f32 weights, gradients and AdamW state (mixed precision, like moe-cli --precision bf16).
--warmup untimed steps, then --steps timed steps; step_s is the median. Prints one JSON line:
  {"bench":"step","impl":"pytorch","preset":..,"batch":..,"seq":..,"threads":..,"precision":..,
   "tokens_per_s":..,"step_s":..,"peak_rss_mb":..,...}
tokens_per_s = batch*seq/step_s; peak_rss_mb = getrusage(RUSAGE_SELF).ru_maxrss / 1024.

Presets (the same shapes as configs/presets/):
  tiny-dense         Qwen3ForCausalLM, FFN 768.
  tiny-dense-active  Qwen3ForCausalLM, FFN 224 (the active width of tiny-k1p1-n16).
  tiny-k1p1-n16      Qwen2MoeForCausalLM: shared expert 160 + 16 routed experts of 64, top-1,
                     norm_topk_prob (routed weight 1), output_router_logits with router_aux_loss_coef
                     0.01 (the Switch load-balance loss). Differences from medmoe's MoE model, all
                     inherent to Qwen2MoE: no q_norm/k_norm (head_dim = hidden/heads = 32 anyway),
                     a sigmoid shared_expert_gate [1, D] per layer, dropless routing (no capacity
                     1.25), no z-loss, the plain softmax gradient instead of the straight-through one.

Usage: pyenv/bin/python tools/bench_torch_step.py --preset tiny-dense --batch 8 --seq 256 --threads 2 [--precision bf16]
"""
import argparse
import os

_TINY = dict(vocab_size=4096, hidden_size=256, num_hidden_layers=4, num_attention_heads=8,
             num_key_value_heads=2, tie_word_embeddings=True)
# preset -> (transformers architecture, config kwargs)
PRESETS = {
    "tiny-dense": ("qwen3", dict(_TINY, head_dim=32, intermediate_size=768)),
    "tiny-dense-active": ("qwen3", dict(_TINY, head_dim=32, intermediate_size=224)),
    "tiny-k1p1-n16": ("qwen2_moe", dict(
        _TINY, intermediate_size=768, qkv_bias=False, decoder_sparse_step=1, mlp_only_layers=[],
        use_sliding_window=False, shared_expert_intermediate_size=160, num_experts=16,
        moe_intermediate_size=64, num_experts_per_tok=1, norm_topk_prob=True,
        output_router_logits=True, router_aux_loss_coef=0.01,
    )),
}


def parse_args():
    ap = argparse.ArgumentParser(description="transformers Qwen3 / Qwen2MoE f32 or autocast-bf16 training step (reference for moe-cli bench step)")
    ap.add_argument("--preset", default="tiny-dense", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", default="f32", choices=["f32", "bf16"],
                    help="bf16: forward under torch.autocast('cpu', dtype=torch.bfloat16)")
    a = ap.parse_args()
    for k in ("batch", "seq", "threads", "steps"):
        if getattr(a, k) < 1:
            ap.error(f"--{k} must be >= 1")
    if a.warmup < 0:
        ap.error("--warmup must be >= 0")
    return a


args = parse_args()
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = str(args.threads)

import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import (Qwen2MoeConfig, Qwen2MoeForCausalLM, Qwen3Config,  # noqa: E402
                          Qwen3ForCausalLM)


def main():
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    arch, p = PRESETS[args.preset]
    config_cls, model_cls = {"qwen3": (Qwen3Config, Qwen3ForCausalLM),
                             "qwen2_moe": (Qwen2MoeConfig, Qwen2MoeForCausalLM)}[arch]
    cfg = config_cls(
        **p,
        hidden_act="silu",
        max_position_embeddings=max(args.seq, 2048),
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        attention_bias=False,
        attention_dropout=0.0,
        use_cache=False,
    )
    model = model_cls(cfg).to(torch.float32)
    model.config._attn_implementation = "eager"
    model.train()
    n_params = sum(t.numel() for t in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05)

    g = torch.Generator().manual_seed(args.seed + 1)
    total = args.warmup + args.steps
    batches = [torch.randint(0, p["vocab_size"], (args.batch, args.seq), generator=g) for _ in range(total)]

    rss_setup_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    bf16 = args.precision == "bf16"
    times, losses = [], []
    for i, ids in enumerate(batches):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(input_ids=ids, labels=ids, use_cache=False)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        losses.append(out.loss.item())  # with output_router_logits: ce + router_aux_loss_coef * aux
        if i >= args.warmup:
            times.append(dt)

    step_s = statistics.median(times)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({
        "bench": "step", "impl": "pytorch", "preset": args.preset,
        "batch": args.batch, "seq": args.seq, "threads": args.threads, "precision": args.precision,
        "tokens_per_s": round(args.batch * args.seq / step_s, 1),
        "step_s": round(step_s, 6),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "rss_before_steps_mb": round(rss_setup_mb, 1),
        "min_step_s": round(min(times), 6), "all_step_s": [round(t, 4) for t in times], "steps": args.steps, "warmup": args.warmup,
        "params": n_params, "arch": type(model).__name__, "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4),
        "torch": torch.__version__, "transformers": transformers.__version__,
    }), flush=True)


if __name__ == "__main__":
    main()
