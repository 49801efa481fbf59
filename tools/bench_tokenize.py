#!/usr/bin/env python3
"""Reference for `moe-cli data pack`: HF `tokenizers` (Python) tokenizes the same corpus with the
same tokenizer.json and packs it the same way; prints one JSON line with tokens/s and the SHA-256
of the packed tokens (equal to ours when both produced the same ids).

Timed, as in ours: load the tokenizer, read corpus/*.jsonl, tokenize (encode_batch_fast, no special
tokens added), append the separator to every document, group documents by (domain, source, license)
in sorted order, cut each group into seq_len rows (last row padded with the separator), write one
uint32 file per group.

    pyenv/bin/python tools/bench_tokenize.py --corpus W/corpus --tokenizer T --seq-len 2048 --threads 2
"""
import argparse
import hashlib
import json
import os
import sys
import tempfile
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", required=True, help="directory of .jsonl files (or a world directory)")
    ap.add_argument("--tokenizer", required=True, help="directory with tokenizer.json")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-docs", type=int, default=4096)
    a = ap.parse_args()
    # The Rust side of `tokenizers` sizes its rayon pool from these at first use.
    os.environ["RAYON_NUM_THREADS"] = str(a.threads)
    os.environ["RAYON_RS_NUM_THREADS"] = str(a.threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    import numpy as np
    import tokenizers

    corpus = a.corpus
    if os.path.isdir(os.path.join(corpus, "corpus")):
        corpus = os.path.join(corpus, "corpus")
    files = sorted(os.path.join(corpus, f) for f in os.listdir(corpus) if f.endswith(".jsonl"))
    out_dir = tempfile.mkdtemp(prefix="bench_tokenize_py_")

    t0 = time.perf_counter()
    tok = tokenizers.Tokenizer.from_file(os.path.join(a.tokenizer, "tokenizer.json"))
    sep = tok.token_to_id("<|endoftext|>")
    docs = []
    for f in files:
        stem = os.path.splitext(os.path.basename(f))[0]
        with open(f, "rb") as fh:
            for raw in fh:
                if not raw.strip():
                    continue
                d = json.loads(raw)
                key = (d.get("domain", "general"), d.get("source", stem), d.get("license", "unknown"))
                docs.append((key, d["text"]))
    groups = {}
    for i, (key, _) in enumerate(docs):
        groups.setdefault(key, []).append(i)
    tokens = 0
    digest = hashlib.sha256()
    for gi, key in enumerate(sorted(groups)):
        members = groups[key]
        stream = []
        for c in range(0, len(members), a.batch_docs):
            chunk = [docs[i][1] for i in members[c : c + a.batch_docs]]
            for enc in tok.encode_batch_fast(chunk, add_special_tokens=False):
                stream.extend(enc.ids)
                stream.append(sep)
        tokens += len(stream)
        arr = np.asarray(stream, dtype="<u4")
        pad = (-len(arr)) % a.seq_len
        if pad:
            arr = np.concatenate([arr, np.full(pad, sep, dtype="<u4")])
        arr = arr.reshape(-1, a.seq_len)
        path = os.path.join(out_dir, f"group-{gi:05}.bin")
        arr.tofile(path)
        digest.update(arr.tobytes())
    secs = time.perf_counter() - t0

    for f in os.listdir(out_dir):
        os.remove(os.path.join(out_dir, f))
    os.rmdir(out_dir)
    print(json.dumps({
        "bench": "tokenize_pack", "impl": "hf-tokenizers-python", "tokens": tokens, "documents": len(docs),
        "seq_len": a.seq_len, "seconds": secs, "tokens_per_s": tokens / secs, "threads": a.threads,
        "tokens_sha256": digest.hexdigest(), "tokenizers": tokenizers.__version__,
        "python": sys.version.split()[0],
    }))


if __name__ == "__main__":
    main()
