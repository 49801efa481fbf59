#!/usr/bin/env bash
# GEMM GFLOP/s: medmoe (moe-cli bench gemm) next to numpy/OpenBLAS (tools/bench_gemm_numpy.py),
# same shapes, same thread count, same run. Prints a markdown table with the ratio ours/reference.
#
# Usage: tools/bench_gemm.sh [--shapes MxKxN,...] [--threads N]
# Env:   PYTHON (default pyenv/bin/python, else python3), MOE_CLI (default target/release/moe-cli),
#        SKIP_BUILD=1 to skip `cargo build --release -p cli`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench_common.sh"

SHAPES="2048x256x768,2048x768x256,512x2048x6144"
THREADS=2
while [[ $# -gt 0 ]]; do
    case "$1" in
        --shapes) SHAPES="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

need_python_modules numpy
build_cli

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

echo "[bench] $MOE_CLI bench gemm --shapes $SHAPES --threads $THREADS" >&2
"$MOE_CLI" bench gemm --shapes "$SHAPES" --threads "$THREADS" | tee "$TMP/ours.jsonl" >&2
echo "[bench] $PYTHON tools/bench_gemm_numpy.py --shapes $SHAPES --threads $THREADS" >&2
"$PYTHON" tools/bench_gemm_numpy.py --shapes "$SHAPES" --threads "$THREADS" | tee "$TMP/ref.jsonl" >&2

"$PYTHON" - "$TMP/ours.jsonl" "$TMP/ref.jsonl" "$SHAPES" "$THREADS" <<'PY'
import json, sys

def load(path, impl):
    rows = {}
    for line in open(path):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if r.get("bench") == "gemm" and r.get("impl") == impl:
            rows[(int(r["m"]), int(r["k"]), int(r["n"]))] = r
    return rows

ours, ref = load(sys.argv[1], "medmoe"), load(sys.argv[2], "numpy")
shapes = [tuple(int(x) for x in s.lower().split("x")) for s in sys.argv[3].split(",") if s]
blas = next((r.get("blas") for r in ref.values() if r.get("blas")), "numpy")
print(f"GEMM f32, {sys.argv[4]} threads, reference: numpy ({blas})\n")
print("| M x K x N | medmoe GFLOP/s | numpy GFLOP/s | ours/ref |")
print("|---|---:|---:|---:|")
missing = False
for s in shapes:
    o, r = ours.get(s), ref.get(s)
    og = f'{o["gflops"]:.1f}' if o else "n/a"
    rg = f'{r["gflops"]:.1f}' if r else "n/a"
    ratio = f'{o["gflops"] / r["gflops"]:.2f}' if o and r and r["gflops"] else "n/a"
    missing |= not (o and r)
    print(f"| {s[0]}x{s[1]}x{s[2]} | {og} | {rg} | {ratio} |")
if missing:
    print("\nerror: some shapes have no result on one side (see the JSON lines above)", file=sys.stderr)
    sys.exit(1)
PY
