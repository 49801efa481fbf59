#!/usr/bin/env python3
"""llama.cpp's quantizer throughput, the reference side of tools/bench_quant.sh.

Times `ggml_quantize_chunk(type, rows, dst, 0, nrows, row_len, NULL)` (one call over all rows,
single-threaded inside llama.cpp; no imatrix, so the `quantize_row_*_ref` quantizers run) from the
prebuilt xllamacpp wheel through ctypes, and prints one JSON line per type:

  {"bench":"quantize","impl":"llama.cpp","type":"Q5_K","rows":..,"row_len":..,"threads":1,
   "median_s":..,"min_s":..,"runs":..,"rows_per_s":..,"mvalues_per_s":..,"in_mb_per_s":..}

`in_mb_per_s` counts the f32 input (4 bytes per value). The first call with --write-inputs draws the
rows (seeded: 0.02 * normal values with a random scale in [0.25, 4) per 32-value block, like trained
weights) into DIR/rows.f32; every call writes llama.cpp's bytes to DIR/<TYPE>.ggml.bin for the Rust
side (kernels-cpu/examples/bench_quant.rs) to compare with its own.

    pyenv/bin/python tools/bench_quant_ggml.py --dir /tmp/bq --rows 1024 --row-len 2048 \\
        --types Q5_K,Q6_K --runs 5 --write-inputs
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_quant_fixtures import TYPES, bind, find_ggml_library, ggml_quantize  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--row-len", type=int, default=2048)
    ap.add_argument("--types", default="Q5_K,Q6_K")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write-inputs", action="store_true")
    args = ap.parse_args()

    path = os.path.join(args.dir, "rows.f32")
    if args.write_inputs:
        os.makedirs(args.dir, exist_ok=True)
        rng = np.random.default_rng(args.seed)
        n = args.rows * args.row_len
        scale = np.repeat(rng.uniform(0.25, 4.0, n // 32), 32)
        x = (0.02 * rng.standard_normal(n) * scale).astype("<f4")
        x.tofile(path)
    x = np.fromfile(path, dtype="<f4").reshape(args.rows, args.row_len)

    _, lib = find_ggml_library()
    bind(lib)
    ids = {name: tid for name, tid, _, _, _ in TYPES}
    for tname in args.types.split(","):
        tname = tname.strip().upper()
        tid = ids[tname]
        q = ggml_quantize(lib, tid, x)  # warm-up, and the bytes to compare with
        q.tofile(os.path.join(args.dir, f"{tname}.ggml.bin"))
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            ggml_quantize(lib, tid, x)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        print(json.dumps({
            "bench": "quantize", "impl": "llama.cpp", "type": tname, "rows": args.rows,
            "row_len": args.row_len, "threads": 1, "median_s": med, "min_s": min(times),
            "runs": args.runs, "rows_per_s": args.rows / med,
            "mvalues_per_s": x.size / med / 1e6, "in_mb_per_s": x.size * 4 / med / 1e6,
        }), flush=True)


if __name__ == "__main__":
    main()
