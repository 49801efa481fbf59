#!/usr/bin/env python3
"""Writes a Qwen3-1.7B-shaped random bf16 checkpoint (config.json + safetensors, ~3.4 GB) for the surgery-at-scale
benchmark (BENCHMARKS.md). Never commit its output: it goes outside the repository (default
/tmp/qwen3-1.7b-random).

The config is Qwen3-1.7B's (hidden 2048, 28 layers, 16 heads / 8 KV heads, head_dim 128, FFN 6144, vocab 151936,
tied embeddings, bfloat16). Weights: normal(0, 0.02) matrices, RMSNorm weights 1. Deterministic: tensor k is drawn
from its own torch.Generator seeded `seed * 1_000_003 + k`, in row chunks, so the output does not depend on the
chunk size and the script holds one chunk (~32 MB) at a time, not the model. The safetensors files are written
directly (header first, then each tensor's bytes), sharded above --max-shard-bytes like HF.

Usage: /work/pyenv/bin/python tools/make_qwen3_1p7b_random.py [--out DIR] [--seed N] [--max-shard-bytes N]
"""

import argparse
import json
import os
import struct
import sys

import torch

CONFIG = {
    "architectures": ["Qwen3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 6144,
    "max_position_embeddings": 40960,
    "max_window_layers": 28,
    "model_type": "qwen3",
    "num_attention_heads": 16,
    "num_hidden_layers": 28,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": None,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.51.0",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}

CHUNK_ELEMS = 16 * 1024 * 1024


def param_specs(c):
    """HF names and shapes in state-dict order; `True` marks RMSNorm weights (ones)."""
    d, f, dh = c["hidden_size"], c["intermediate_size"], c["head_dim"]
    qd, kvd = c["num_attention_heads"] * dh, c["num_key_value_heads"] * dh
    specs = [("model.embed_tokens.weight", [c["vocab_size"], d], False)]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}"
        specs += [
            (f"{p}.input_layernorm.weight", [d], True),
            (f"{p}.self_attn.q_proj.weight", [qd, d], False),
            (f"{p}.self_attn.k_proj.weight", [kvd, d], False),
            (f"{p}.self_attn.v_proj.weight", [kvd, d], False),
            (f"{p}.self_attn.o_proj.weight", [d, qd], False),
            (f"{p}.self_attn.q_norm.weight", [dh], True),
            (f"{p}.self_attn.k_norm.weight", [dh], True),
            (f"{p}.post_attention_layernorm.weight", [d], True),
            (f"{p}.mlp.gate_proj.weight", [f, d], False),
            (f"{p}.mlp.up_proj.weight", [f, d], False),
            (f"{p}.mlp.down_proj.weight", [d, f], False),
        ]
    specs.append(("model.norm.weight", [d], True))
    if not c["tie_word_embeddings"]:
        specs.append(("lm_head.weight", [c["vocab_size"], d], False))
    return specs


def numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def header(entries, metadata):
    """entries: [(name, shape, start, end)]; keys in name order, padded to 8 bytes."""
    h = {"__metadata__": metadata}
    for name, shape, s, e in sorted(entries):
        h[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [s, e]}
    b = json.dumps(h, separators=(",", ":")).encode()
    return b + b" " * ((8 - len(b) % 8) % 8)


def write_tensor(fh, k, shape, ones, seed):
    n = numel(shape)
    if ones:
        fh.write(torch.ones(n, dtype=torch.bfloat16).view(torch.int16).numpy().tobytes())
        return
    g = torch.Generator().manual_seed(seed * 1_000_003 + k)
    done = 0
    while done < n:
        m = min(CHUNK_ELEMS, n - done)
        x = torch.randn(m, generator=g, dtype=torch.float32).mul_(0.02).to(torch.bfloat16)
        fh.write(x.view(torch.int16).numpy().tobytes())
        done += m


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/tmp/qwen3-1.7b-random")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-shard-bytes", type=int, default=5_000_000_000, help="HF's default 5 GB")
    a = ap.parse_args()
    if os.path.exists(a.out):
        sys.exit(f"{a.out} already exists; remove it first")
    if os.path.realpath(a.out).startswith(os.path.realpath(os.path.join(os.path.dirname(__file__), ".."))):
        sys.exit("write the checkpoint outside the repository (it is ~3.4 GB and never committed)")
    specs = param_specs(CONFIG)
    sizes = [numel(s) * 2 for _, s, _ in specs]
    total = sum(sizes)
    shards, cur = [[]], 0
    for k, n in enumerate(sizes):
        if shards[-1] and cur + n > a.max_shard_bytes:
            shards.append([])
            cur = 0
        shards[-1].append(k)
        cur += n
    tmp = a.out + ".tmp"
    os.makedirs(tmp)
    weight_map = {}
    for si, ks in enumerate(shards):
        fname = "model.safetensors" if len(shards) == 1 else f"model-{si + 1:05d}-of-{len(shards):05d}.safetensors"
        entries, off = [], 0
        for k in ks:
            entries.append((specs[k][0], specs[k][1], off, off + sizes[k]))
            off += sizes[k]
            weight_map[specs[k][0]] = fname
        h = header(entries, {"format": "pt"})
        with open(os.path.join(tmp, fname), "wb") as fh:
            fh.write(struct.pack("<Q", len(h)))
            fh.write(h)
            for k in ks:
                write_tensor(fh, k, specs[k][1], specs[k][2], a.seed)
                print(f"\r{fname}: {specs[k][0]:<48}", end="", file=sys.stderr, flush=True)
            fh.flush()
            os.fsync(fh.fileno())
    print(file=sys.stderr)
    if len(shards) > 1:
        with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as fh:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh, indent=2)
    with open(os.path.join(tmp, "config.json"), "w") as fh:
        json.dump(CONFIG, fh, indent=2)
        fh.write("\n")
    os.rename(tmp, a.out)
    params = sum(numel(s) for _, s, _ in specs)
    print(f"wrote {a.out}: {params / 1e9:.3f} B parameters, {total / 1e9:.2f} GB bf16, {len(shards)} file(s)")


if __name__ == "__main__":
    main()
