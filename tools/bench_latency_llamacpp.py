#!/usr/bin/env python3
"""Batch-1 prompt (prefill) and decode tokens/s of GGUF exports in llama.cpp (the xllamacpp wheel, CPU) next to
our own runtime (`moe-cli generate` on the same .gguf file), same machine, same run.

For each `--model NAME=FILE.gguf`: our runtime generates from a text prompt (greedy) and prints the prompt ids and
its prefill / decode tokens/s; llama.cpp then gets exactly those prompt ids and the same number of new tokens
(`ignore_eos`), and its server timings are read. Rounds alternate the two runtimes; medians are printed as one JSON
line per model and runtime, then a markdown table. Run on a quiet machine:

    cargo build --release -p cli
    pyenv/bin/python tools/bench_latency_llamacpp.py --moe-cli target/release/moe-cli --tokenizer runs/default/data/tokenizer \
        --model moe_q5=moe-q5_k_m.gguf --model teacher_q5=base-q5_k_m.gguf --model small_q8=small-q8_0.gguf

The GGUF files need their vocabulary (export without --no-tokenizer). Both runtimes ignore end-of-sequence tokens
(`--ignore-eos`, `ignore_eos`), so both decode exactly --new-tokens tokens. Our runtime loads a .gguf dequantized and
computes in f32; llama.cpp computes on the quantized blocks. Counting: our decode tokens/s counts the tokens after the
first (the first comes from the prompt's forward, timed as prefill); llama.cpp's predicted_per_second is its own
generation timer.
"""
import argparse
import json
import statistics
import subprocess


def ours(cli, gguf, tokenizer, prompt, new_tokens, threads):
    cmd = [cli, "--threads", str(threads), "generate", "--model", gguf, "--tokenizer", tokenizer, "--prompt", prompt,
           "--max-new-tokens", str(new_tokens), "--ignore-eos"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    lines = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    g = lines[-1]
    return {"prompt_ids": g["prompt_ids"], "prefill_tokens": g["prefill_tokens"],
            "prefill_tokens_per_s": g["prefill_tokens_per_s"], "decode_tokens": g["decode_tokens"],
            "decode_tokens_per_s": g["decode_tokens_per_s"]}


def llama_server(gguf, n_ctx, threads):
    import xllamacpp as xlc

    p = xlc.CommonParams()
    p.model.path = gguf
    p.n_ctx = n_ctx
    p.n_batch = n_ctx
    p.n_ubatch = n_ctx
    p.n_parallel = 1
    p.cache_prompt = False
    p.warmup = True
    p.cpuparams.n_threads = threads
    p.cpuparams_batch.n_threads = threads
    return xlc.Server(p)


def llama(server, ids, new_tokens):
    res = server.handle_completions({"prompt": ids, "max_tokens": new_tokens, "temperature": 0.0, "ignore_eos": True,
                                     "cache_prompt": False})
    if isinstance(res, str):
        res = json.loads(res)
    t = res.get("timings")
    if not t:
        raise RuntimeError(f"no timings in llama.cpp's answer: {json.dumps(res)[:1000]}")
    # The first new token comes from the prompt's forward; llama.cpp counts it as predicted.
    return {"prefill_tokens": t["prompt_n"], "prefill_tokens_per_s": t["prompt_per_second"],
            "decode_tokens": t["predicted_n"], "decode_tokens_per_s": t["predicted_per_second"]}


def median_of(runs):
    return {k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "prompt_ids"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, help="NAME=FILE.gguf (repeatable)")
    ap.add_argument("--moe-cli", default="target/release/moe-cli")
    ap.add_argument("--tokenizer", required=True, help="tokenizer.json or its directory (for our runtime)")
    ap.add_argument("--prompt-words", type=int, default=96)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    words = "the patient reported fever and cough after the first week of treatment with the new drug".split()
    prompt = " ".join(words[i % len(words)] for i in range(a.prompt_words))
    rows = []
    for spec in a.model:
        name, gguf = spec.split("=", 1)
        first = ours(a.moe_cli, gguf, a.tokenizer, prompt, a.new_tokens, a.threads)
        ids = first["prompt_ids"]
        server = llama_server(gguf, len(ids) + a.new_tokens + 16, a.threads)
        mine, theirs = [], []
        for _ in range(a.rounds):
            mine.append(ours(a.moe_cli, gguf, a.tokenizer, prompt, a.new_tokens, a.threads))
            theirs.append(llama(server, ids, a.new_tokens))
        del server
        for runtime, runs in (("medmoe", mine), ("llama.cpp", theirs)):
            row = {"model": name, "file": gguf, "runtime": runtime, "rounds": a.rounds, **median_of(runs)}
            print(json.dumps(row))
            rows.append(row)
    print("\n| model | runtime | prompt tokens | prefill tok/s | decoded tokens | decode tok/s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['runtime']} | {r['prefill_tokens']:.0f} | {r['prefill_tokens_per_s']:.1f} | "
              f"{r['decode_tokens']:.0f} | {r['decode_tokens_per_s']:.1f} |")


if __name__ == "__main__":
    main()
