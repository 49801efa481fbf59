#!/usr/bin/env python3
"""numpy float32 GEMM reference for `moe-cli bench gemm`.

For every shape MxKxN: C[M,N] = A[M,K] @ B[K,N] in float32, OpenBLAS limited to --threads,
--warmup untimed runs, then the median of --runs timed runs. Prints one JSON line per shape:
  {"bench":"gemm","impl":"numpy","m":..,"k":..,"n":..,"gflops":..,...}
gflops = 2*M*K*N / median_seconds / 1e9.

Usage: pyenv/bin/python tools/bench_gemm_numpy.py --shapes 2048x256x768,2048x768x256 --threads 2
"""
import argparse
import os
import sys


def parse_args():
    ap = argparse.ArgumentParser(description="numpy f32 matmul GFLOP/s (reference for moe-cli bench gemm)")
    ap.add_argument("--shapes", default="2048x256x768,2048x768x256,512x2048x6144",
                    help="comma-separated MxKxN list")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--runs", type=int, default=20, help="timed runs per shape (>= 20)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.runs < 20:
        ap.error("--runs must be >= 20")
    if a.threads < 1:
        ap.error("--threads must be >= 1")
    shapes = []
    for s in a.shapes.split(","):
        parts = s.strip().lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            ap.error(f"bad shape {s!r}: expected MxKxN, e.g. 2048x256x768")
        shapes.append(tuple(int(p) for p in parts))
    return a, shapes


args, SHAPES = parse_args()

# Thread limits must be in the environment before numpy (and its OpenBLAS) is loaded.
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(args.threads)

import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

try:
    from threadpoolctl import threadpool_limits  # noqa: E402
    _limiter = threadpool_limits(limits=args.threads)
    thread_control = "env+threadpoolctl"
except ImportError:
    thread_control = "env"


def blas_name():
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        return f'{blas.get("name", "?")} {blas.get("version", "")}'.strip()
    except Exception:  # older numpy: show_config has no dict mode
        return "unknown"


def main():
    rng = np.random.default_rng(args.seed)
    blas = blas_name()
    for m, k, n in SHAPES:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        c = np.empty((m, n), dtype=np.float32)
        for _ in range(args.warmup):
            np.matmul(a, b, out=c)
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            np.matmul(a, b, out=c)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        flop = 2.0 * m * k * n
        print(json.dumps({
            "bench": "gemm", "impl": "numpy", "m": m, "k": k, "n": n,
            "gflops": round(flop / med / 1e9, 3),
            "median_s": med, "min_s": min(times), "runs": args.runs, "threads": args.threads,
            "blas": blas, "thread_control": thread_control, "numpy": np.__version__,
        }), flush=True)


if __name__ == "__main__":
    sys.exit(main())
