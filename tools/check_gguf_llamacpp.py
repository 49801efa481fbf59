#!/usr/bin/env python3
"""Does llama.cpp run a GGUF file the way our runtime does? For each `--gguf FILE`: llama.cpp (the xllamacpp wheel,
CPU, f32 K/V cache, flash attention off) gives the top-k next-token log-probs after every prefix of a token
sequence; our runtime (`moe-cli logits --model FILE`, which loads the .gguf dequantized) gives all logits of the
same sequence in one forward. Prints per file the largest and the mean |log-prob difference| over the top-k tokens
of every prefix and how often the two runtimes' top-1 tokens agree, as one JSON line per file, and fails (exit 1)
when the mean difference exceeds --tol or the top-1 tokens agree at fewer than --min-top1 of the positions. The
default tolerance is for quantized files: llama.cpp's CPU backend multiplies quantized weights by activations it
quantizes itself (Q8_K / Q8_0), we multiply the dequantized weights by f32 activations, so the two differ by ~0.02
on average, and by up to 0.4 at the odd position where the perturbation flips a near-tied expert choice; f32 files
agree to ~1e-5 (pass --tol 1e-4).

    cargo build --release -p cli
    pyenv/bin/python tools/check_gguf_llamacpp.py --moe-cli target/release/moe-cli \\
        --gguf runs/default/p4/exports/Q5_K-step-000104.gguf [--gguf ...] [--ids 1,2,...] [--top 8] [--tol 0.05] [--min-top1 0.9]

The default ids are a fixed pseudo-random sequence of 48 tokens below the vocabulary size read from the file.
Used for GGUF exports that have no committed fixture (P4's QAT exports, whose codes are the trained ones): the
committed oracle (tools/gen_gguf_oracle.py, cli/tests/gguf_oracle.rs) covers the exporter on fixed models.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

from gen_gguf_oracle import llama_server, top_logprobs


def vocab_size(path):
    from gguf import GGUFReader

    r = GGUFReader(path)
    for t in r.tensors:
        if t.name == "token_embd.weight":
            return int(t.shape[1])
    raise RuntimeError(f"{path}: no token_embd.weight")


def default_ids(vocab, n=48):
    x, out = 12345, []
    for _ in range(n):
        x = (x * 1103515245 + 12345) % (1 << 31)
        out.append(x % vocab)
    return out


def llama_top(path, ids, top):
    server = llama_server(path, n_ctx=max(64, len(ids) + 8))
    out = [top_logprobs(server, path, ids[:pos], top) for pos in range(1, len(ids) + 1)]
    del server
    return out


def our_logprobs(cli, path, ids):
    from safetensors.numpy import load_file

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "logits.safetensors")
        subprocess.run([cli, "logits", "--model", path, "--ids", ",".join(map(str, ids)), "--out", out], check=True,
                       capture_output=True)
        logits = load_file(out)["logits"][0]
    rows = []
    for row in logits.astype("float64"):
        m = row.max()
        lse = m + math.log(sum(math.exp(v - m) for v in row))
        rows.append(row - lse)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moe-cli", default="target/release/moe-cli")
    ap.add_argument("--gguf", action="append", required=True)
    ap.add_argument("--ids", default=None, help="comma-separated token ids (default: 48 pseudo-random ones)")
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--tol", type=float, default=0.05, help="largest mean |log-prob difference| accepted")
    ap.add_argument("--min-top1", type=float, default=0.9, help="smallest share of positions with the same top-1")
    a = ap.parse_args()
    bad = False
    for path in a.gguf:
        ids = [int(x) for x in a.ids.split(",")] if a.ids else default_ids(vocab_size(path))
        theirs = llama_top(path, ids, a.top)
        ours = our_logprobs(a.moe_cli, path, ids)
        diffs, agree = [], 0
        for pos, top in enumerate(theirs):
            diffs += [abs(lp - ours[pos][tok]) for tok, lp in top]
            agree += int(top[0][0] == int(ours[pos].argmax()))
        mean = sum(diffs) / len(diffs)
        line = {"gguf": path, "positions": len(ids), "top": a.top, "max_abs_logprob_diff": max(diffs),
                "mean_abs_logprob_diff": mean, "top1_agree": agree, "tol": a.tol}
        print(json.dumps(line), flush=True)
        bad |= mean > a.tol or agree < a.min_top1 * len(ids)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
