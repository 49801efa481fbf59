#!/usr/bin/env python3
"""numpy and torch GEMM references for kernels-cpu's bench_gemm example (tools/bench_gemm_isa.sh).

For every shape MxKxN and every implementation: --warmup untimed runs, then the median of --runs
timed runs of C[M,N] = A[M,K] @ B[K,N] (row-major, or the --trans layout). Implementations:
  numpy           np.matmul, float32 (OpenBLAS)
  torch-f32       torch.matmul, float32
  torch-bf16      torch.matmul on bfloat16 tensors (oneDNN; AMX on CPUs that have it)
  torch-bf16-cast a.bfloat16() @ b.bfloat16() from float32 tensors, the casts timed too
                  (what our bf16 GEMM does: it takes f32 operands and rounds them while packing)
One JSON line each: {"bench":"gemm","impl":..,"dtype":..,"m":..,"k":..,"n":..,"trans":..,
"threads":..,"median_s":..,"gflops":..}, gflops = 2*M*K*N / median_s / 1e9.

Usage: pyenv/bin/python tools/bench_gemm_torch.py --shapes 2048x256x768 --threads 2 [--impls numpy,torch-bf16]
"""
import argparse
import os
import sys

IMPLS = ["numpy", "torch-f32", "torch-bf16", "torch-bf16-cast"]


def parse_args():
    ap = argparse.ArgumentParser(description="numpy / torch GEMM GFLOP/s (references for bench_gemm)")
    ap.add_argument("--shapes", default="2048x256x768,2048x768x256,512x2048x6144", help="comma-separated MxKxN list")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--trans", default="NN", help="NN, NT (B stored [N,K]), TN (A stored [K,M]) or TT")
    ap.add_argument("--impls", default=",".join(IMPLS), help="comma-separated subset of " + ",".join(IMPLS))
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.threads < 1 or a.runs < 1:
        ap.error("--threads and --runs must be >= 1")
    if a.trans not in ("NN", "NT", "TN", "TT"):
        ap.error("--trans must be NN, NT, TN or TT")
    impls = [i.strip() for i in a.impls.split(",") if i.strip()]
    bad = [i for i in impls if i not in IMPLS]
    if bad:
        ap.error(f"unknown impl(s) {bad}; choose from {IMPLS}")
    shapes = []
    for s in a.shapes.split(","):
        parts = s.strip().lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            ap.error(f"bad shape {s!r}: expected MxKxN, e.g. 2048x256x768")
        shapes.append(tuple(int(p) for p in parts))
    return a, shapes, impls


args, SHAPES, IMPL_LIST = parse_args()

# Thread limits must be in the environment before numpy / torch load their BLAS.
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(args.threads)

import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(args.threads)


def timed(fn):
    for _ in range(args.warmup):
        fn()
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def operands(m, k, n, rng):
    """f32 numpy operands stored as --trans says, and the logical views A[M,K], B[K,N]."""
    a_st = rng.standard_normal((k, m) if args.trans[0] == "T" else (m, k), dtype=np.float32)
    b_st = rng.standard_normal((n, k) if args.trans[1] == "T" else (k, n), dtype=np.float32)
    a = a_st.T if args.trans[0] == "T" else a_st
    b = b_st.T if args.trans[1] == "T" else b_st
    return a, b


def main():
    rng = np.random.default_rng(args.seed)
    for m, k, n in SHAPES:
        a, b = operands(m, k, n, rng)
        ta = torch.from_numpy(a_stored(a, 0))
        tb = torch.from_numpy(a_stored(b, 1))
        ta, tb = view(ta, 0), view(tb, 1)
        for impl in IMPL_LIST:
            if impl == "numpy":
                c = np.empty((m, n), dtype=np.float32)
                med = timed(lambda: np.matmul(a, b, out=c))
                dtype = "f32"
            elif impl == "torch-f32":
                c = torch.empty((m, n), dtype=torch.float32)
                med = timed(lambda: torch.matmul(ta, tb, out=c))
                dtype = "f32"
            elif impl == "torch-bf16":
                ab, bb = ta.bfloat16(), tb.bfloat16()
                c = torch.empty((m, n), dtype=torch.bfloat16)
                med = timed(lambda: torch.matmul(ab, bb, out=c))
                dtype = "bf16"
            else:  # torch-bf16-cast
                med = timed(lambda: torch.matmul(ta.bfloat16(), tb.bfloat16()))
                dtype = "bf16"
            print(json.dumps({
                "bench": "gemm", "impl": impl, "dtype": dtype, "m": m, "k": k, "n": n, "trans": args.trans,
                "threads": args.threads, "median_s": med, "gflops": round(2.0 * m * k * n / med / 1e9, 3),
                "runs": args.runs, "torch": torch.__version__, "numpy": np.__version__,
            }), flush=True)


def a_stored(x, which):
    """The stored (contiguous) array behind logical operand x (0 = A, 1 = B)."""
    return np.ascontiguousarray(x.T) if args.trans[which] == "T" else np.ascontiguousarray(x)


def view(t, which):
    """The logical operand of stored tensor t: a transposed view where --trans says so."""
    return t.t() if args.trans[which] == "T" else t


if __name__ == "__main__":
    sys.exit(main())
