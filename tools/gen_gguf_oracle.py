#!/usr/bin/env python3
"""Writes tests/fixtures/gguf/: llama.cpp's next-token log-probs on GGUF files written by our own `moe-cli export gguf`,
plus the sha256 of each file llama.cpp ran (tests/gguf_oracle.rs regenerates the same files with our code, checks the
hashes, and compares our runtime's log-probs on them).

Models (deterministic, built with our binary from the committed configs in tests/fixtures/gguf/):
- dense: `moe-cli init --preset dense_config.json --seed 7 --std 0.1` (vocab 1024, hidden 256, 2 layers, GQA 4/2,
  head_dim 64, FFN 512);
- moe: `moe-cli surgery` of that dense model to moe_preset.json (4 routed experts x 128, shared 192 -> padded to
  2 x 128 = 256 in the GGUF; router centroids, magnitude importance);
both with the committed byte-level BPE tokenizer tests/fixtures/gguf/tokenizer/ (made by this script) copied in.

Files: dense f32 / q8_0 / q5_k_m (arch qwen3), moe glm4moe f32 / q8_0 / q5_k_m, moe dots1 f32 (the layout
comparison). Each is also parsed with gguf-py's GGUFReader (keys, value types, tensor types, offsets) as a check.

llama.cpp: the xllamacpp wheel (llama.cpp b11549, CPU), f32 K/V cache, flash attention off, 2 threads, one request
per prefix of each fixed token sequence with `n_probs` = 8: the top-8 (token id, log-prob) of the next token, which
llama.cpp computes by a softmax over all logits.

Usage (from the repository root, with a built binary):
    cargo build --release -p cli
    pyenv/bin/python tools/gen_gguf_oracle.py [--moe-cli target/release/moe-cli] [--out tests/fixtures/gguf]
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

SEQUENCES = [
    [5, 300, 17, 999, 42, 512, 7, 128],
    [1000, 1, 2, 3, 4, 5, 6, 700],
    [64, 64, 64, 900, 250, 33, 811, 90],
]
N_PROBS = 8
SEED, STD = 7, 0.1

DENSE_CONFIG = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "vocab_size": 1024,
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "hidden_act": "silu",
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-06,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
    "attention_bias": False,
    "torch_dtype": "float32",
    "bos_token_id": 0,
    "eos_token_id": 0,
}
MOE_PRESET = dict(
    DENSE_CONFIG,
    architectures=["MedMoeForCausalLM"],
    model_type="medmoe",
    moe={"num_experts": 4, "expert_width": 128, "shared_width": 192, "router_weighting": "ste"},
)
# (name, model, --type, --moe-arch)
EXPORTS = [
    ("dense_f32", "dense", "f32", "glm4moe"),
    ("dense_q8_0", "dense", "q8_0", "glm4moe"),
    ("dense_q5_k_m", "dense", "q5_k_m", "glm4moe"),
    ("moe_glm4moe_f32", "moe", "f32", "glm4moe"),
    ("moe_glm4moe_q8_0", "moe", "q8_0", "glm4moe"),
    ("moe_glm4moe_q5_k_m", "moe", "q5_k_m", "glm4moe"),
    ("moe_dots1_f32", "moe", "f32", "dots1"),
]


def bytes_to_unicode():
    """GPT-2's byte -> printable character map (what byte-level BPE vocabularies are written in)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def write_tokenizer(dir_):
    """A small Qwen-style byte-level BPE: 3 special tokens, the 128 ASCII byte symbols, a few merges (ids < 1024)."""
    os.makedirs(dir_, exist_ok=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {}
    # Byte symbols of ASCII only: llama.cpp's server withholds the log-probs of a token that ends in an
    # incomplete UTF-8 sequence (a lone byte >= 0x80), and any id may be the top prediction.
    for b, ch in sorted(bytes_to_unicode().items()):
        if b < 128:
            vocab[ch] = len(specials) + len(vocab)
    merges = [["Ġ", "t"], ["h", "e"], ["Ġt", "he"], ["i", "n"], ["e", "r"], ["a", "n"]]
    for a, b in merges:
        vocab[a + b] = len(specials) + len(vocab)
    pattern = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
            for i, s in enumerate(specials)
        ],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            ],
        },
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": vocab, "merges": merges,
        },
    }
    cfg = {
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "add_bos_token": False,
        "chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    }
    for name, obj in [("tokenizer.json", tok), ("tokenizer_config.json", cfg)]:
        with open(os.path.join(dir_, name), "w") as f:
            json.dump(obj, f, indent=1, ensure_ascii=False, sort_keys=True)
            f.write("\n")


def run(cmd):
    print("+", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_with_gguf_py(path, arch, moe):
    """gguf-py's reader must parse the file and find the keys llama.cpp needs with the right value types."""
    import gguf

    r = gguf.GGUFReader(path)
    fields = {f.name: f for f in r.fields.values()}
    T = gguf.GGUFValueType

    def want(key, vtype):
        assert key in fields, f"{path}: missing key {key}"
        got = fields[key].types[0]
        assert got == vtype, f"{path}: {key} has type {got}, expected {vtype}"

    want("general.architecture", T.STRING)
    assert bytes(fields["general.architecture"].parts[-1]).decode() == arch
    for k in ["context_length", "embedding_length", "block_count", "attention.head_count", "attention.head_count_kv",
              "attention.key_length", "attention.value_length"]:
        want(f"{arch}.{k}", T.UINT32)
    want(f"{arch}.attention.layer_norm_rms_epsilon", T.FLOAT32)
    want(f"{arch}.rope.freq_base", T.FLOAT32)
    if moe:
        for k in ["expert_count", "expert_used_count", "expert_feed_forward_length", "expert_shared_count",
                  "leading_dense_block_count", "expert_gating_func"]:
            want(f"{arch}.{k}", T.UINT32)
        want(f"{arch}.expert_weights_scale", T.FLOAT32)
        want(f"{arch}.expert_weights_norm", T.BOOL)
    for k in ["tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"]:
        want(k, T.ARRAY)
    want("tokenizer.ggml.model", T.STRING)
    tokens = fields["tokenizer.ggml.tokens"]
    embd = [t for t in r.tensors if t.name == "token_embd.weight"][0]
    assert len(tokens.data) == int(embd.shape[1]), "tokens must be as many as token_embd rows"
    for t in r.tensors:
        assert t.data_offset % 32 == 0, f"{t.name} not aligned"
        if t.name.endswith("_norm.weight") or "ffn_gate_inp" in t.name or len(t.shape) == 1:
            assert t.tensor_type == gguf.GGMLQuantizationType.F32, f"{t.name} must be F32"
        if t.tensor_type in (gguf.GGMLQuantizationType.Q5_K, gguf.GGMLQuantizationType.Q6_K):
            assert int(t.shape[0]) % 256 == 0, f"{t.name}: K-quant rows must be multiples of 256"
    return {t.name: t.tensor_type.name for t in r.tensors}


def llama_server(path, n_ctx=64, threads=2):
    """An xllamacpp server on `path`: CPU, f32 K/V cache, flash attention off, no prompt cache, no warmup."""
    import xllamacpp as xlc

    p = xlc.CommonParams()
    p.model.path = path
    p.n_ctx = n_ctx
    p.n_batch = n_ctx
    p.n_ubatch = n_ctx
    p.n_parallel = 1
    p.cache_type_k = xlc.ggml_type(0)  # GGML_TYPE_F32
    p.cache_type_v = xlc.ggml_type(0)
    p.flash_attn_type = xlc.llama_flash_attn_type(0)  # disabled
    p.cache_prompt = False
    p.warmup = False
    p.cpuparams.n_threads = threads
    p.cpuparams_batch.n_threads = threads
    return xlc.Server(p)


def top_logprobs(server, path, prefix, n_probs):
    """llama.cpp's top-`n_probs` (token id, log-prob) of the next token after the ids `prefix`."""
    res = server.handle_completions({"prompt": prefix, "max_tokens": 1, "n_probs": n_probs, "temperature": 0.0,
                                     "cache_prompt": False})
    if isinstance(res, str):
        res = json.loads(res)
    if "error" in res or not res.get("choices") or not res["choices"][0].get("logprobs"):
        raise RuntimeError(f"{path}: {json.dumps(res)[:2000]}")
    probs = res["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    return [[int(t["id"]), float(t["logprob"])] for t in probs]


def llama_logprobs(path):
    server = llama_server(path)
    out = []
    for s, seq in enumerate(SEQUENCES):
        for pos in range(1, len(seq) + 1):
            out.append({"seq": s, "pos": pos - 1, "top": top_logprobs(server, path, seq[:pos], N_PROBS)})
    del server
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moe-cli", default="target/release/moe-cli")
    ap.add_argument("--out", default="tests/fixtures/gguf")
    args = ap.parse_args()
    out = args.out
    os.makedirs(out, exist_ok=True)
    tok_dir = os.path.join(out, "tokenizer")
    write_tokenizer(tok_dir)
    for name, obj in [("dense_config.json", DENSE_CONFIG), ("moe_preset.json", MOE_PRESET)]:
        with open(os.path.join(out, name), "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
    cli = os.path.abspath(args.moe_cli)
    result = {
        "version": 1,
        "regenerate": "pyenv/bin/python tools/gen_gguf_oracle.py",
        "llama_cpp": "xllamacpp 2026.10.11549 (llama.cpp b11549), CPU, f32 KV cache, flash attention off",
        "seed": SEED,
        "std": STD,
        "sequences": SEQUENCES,
        "files": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        dense = os.path.join(tmp, "dense")
        moe = os.path.join(tmp, "moe")
        run([cli, "init", "--preset", os.path.join(out, "dense_config.json"), "--seed", str(SEED), "--std", str(STD),
             "--out", dense])
        run([cli, "surgery", "--model", dense, "--preset", os.path.join(out, "moe_preset.json"), "--out", moe])
        for d in [dense, moe]:
            for f in ["tokenizer.json", "tokenizer_config.json"]:
                shutil.copy(os.path.join(tok_dir, f), d)
        for name, model, ty, arch in EXPORTS:
            path = os.path.join(tmp, name + ".gguf")
            run([cli, "export", "gguf", "--model", dense if model == "dense" else moe, "--type", ty, "--moe-arch", arch,
                 "--out", path])
            gguf_arch = "qwen3" if model == "dense" else arch
            types = check_with_gguf_py(path, gguf_arch, model == "moe")
            entry = {
                "sha256": sha256(path),
                "bytes": os.path.getsize(path),
                "model": model,
                "type": ty,
                "arch": gguf_arch,
                "tensor_types": types,
                "logprobs": llama_logprobs(path),
            }
            result["files"][name] = entry
            print(f"{name}: {entry['bytes']} bytes, sha256 {entry['sha256'][:16]}", file=sys.stderr)
    with open(os.path.join(out, "oracle.json"), "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
