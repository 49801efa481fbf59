#!/usr/bin/env bash
# Quantizer throughput: our kernels-cpu codecs (examples/bench_quant.rs) next to llama.cpp's
# ggml_quantize_chunk (tools/bench_quant_ggml.py, xllamacpp wheel through ctypes), on the same rows,
# in the same run. R rounds interleaved (llama.cpp, then ours at each --threads count); each side
# reports the median of --runs timed calls per round; the table gives the median over rounds of
# each, the per-round ratio ours/llama.cpp and whether our bytes equal llama.cpp's.
# llama.cpp's ggml_quantize_chunk is one single-threaded call; ours runs on a rayon pool of N threads.
#
# Usage: tools/bench_quant.sh [--rows 1024] [--row-len 2048] [--types Q5_K,Q6_K] [--threads 1,2]
#                             [--rounds 5] [--runs 5] [--force]
# Refuses to run when the 1-minute load average is >= 1.5 (shared 2-core machine) unless --force.
# Env:   PYTHON (default pyenv/bin/python, else python3), SKIP_BUILD=1 to skip the cargo build,
#        CARGO_TARGET_DIR (where the example binary is built, default target).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench_common.sh"

ROWS=1024
ROW_LEN=2048
TYPES=Q5_K,Q6_K
THREADS=1,2
ROUNDS=5
RUNS=5
FORCE=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --rows) ROWS="$2"; shift 2 ;;
        --row-len) ROW_LEN="$2"; shift 2 ;;
        --types) TYPES="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --runs) RUNS="$2"; shift 2 ;;
        --force) FORCE=1; shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer, got '$ROUNDS'"

load() { cut -d' ' -f1-3 /proc/loadavg; }
LOAD1="$(cut -d' ' -f1 /proc/loadavg)"
if [[ "$FORCE" != "1" ]] && awk -v l="$LOAD1" 'BEGIN { exit !(l >= 1.5) }'; then
    die "load average $LOAD1 >= 1.5: numbers would not be comparable (wait, or pass --force)"
fi

need_python_modules numpy gguf xllamacpp
BIN="${CARGO_TARGET_DIR:-target}/release/examples/bench_quant"
if [[ "${SKIP_BUILD:-0}" != "1" ]]; then
    echo "[bench] cargo build --release -p kernels-cpu --example bench_quant" >&2
    cargo build --release -p kernels-cpu --example bench_quant >&2
fi
[[ -x "$BIN" ]] || die "$BIN not found (set CARGO_TARGET_DIR or drop SKIP_BUILD)"

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

echo "load_start $(load)" >"$TMP/load.txt"
WRITE=--write-inputs
for ((r = 1; r <= ROUNDS; r++)); do
    echo "[bench] round $r/$ROUNDS: llama.cpp" >&2
    "$PYTHON" tools/bench_quant_ggml.py --dir "$TMP" --rows "$ROWS" --row-len "$ROW_LEN" --types "$TYPES" \
        --runs "$RUNS" $WRITE | tee -a "$TMP/ref.jsonl" >&2
    WRITE=""
    echo "[bench] round $r/$ROUNDS: medmoe (threads $THREADS)" >&2
    "$BIN" --dir "$TMP" --row-len "$ROW_LEN" --types "$TYPES" --threads "$THREADS" --runs "$RUNS" |
        tee -a "$TMP/ours.jsonl" >&2
done
echo "load_end $(load)" >>"$TMP/load.txt"

"$PYTHON" - "$TMP" <<'EOF'
import json, statistics, sys
tmp = sys.argv[1]
ref = [json.loads(l) for l in open(f"{tmp}/ref.jsonl")]
ours = [json.loads(l) for l in open(f"{tmp}/ours.jsonl")]
loads = dict(l.split(" ", 1) for l in open(f"{tmp}/load.txt").read().splitlines())
r0 = ref[0]
print(f"rows {r0['rows']} x {r0['row_len']} f32 ({r0['rows'] * r0['row_len'] * 4 / 1e6:.1f} MB), "
      f"{len(ref) // len({x['type'] for x in ref})} rounds x {r0['runs']} runs, "
      f"load {loads['load_start']} -> {loads['load_end']}")
print()
print("| type | impl | threads | median s | rows/s | input MB/s | ours/llama.cpp (median, min..max) | identical bytes |")
print("|---|---|---:|---:|---:|---:|---:|---|")
for t in dict.fromkeys(x["type"] for x in ref):
    rt = [x for x in ref if x["type"] == t]
    med = statistics.median(x["median_s"] for x in rt)
    print(f"| {t} | llama.cpp ggml_quantize_chunk | 1 | {med:.4f} | {r0['rows'] / med:.0f} | "
          f"{rt[0]['rows'] * rt[0]['row_len'] * 4 / med / 1e6:.1f} | 1 | - |")
    for th in dict.fromkeys(x["threads"] for x in ours):
        ot = [x for x in ours if x["type"] == t and x["threads"] == th]
        omed = statistics.median(x["median_s"] for x in ot)
        ratios = [b["median_s"] / a["median_s"] for a, b in zip(ot, rt)]  # speed ratio per round
        ident = all(x["identical"] is True for x in ot)
        print(f"| {t} | medmoe quantize_rows | {th} | {omed:.4f} | {r0['rows'] / omed:.0f} | "
              f"{ot[0]['rows'] * ot[0]['row_len'] * 4 / omed / 1e6:.1f} | "
              f"{statistics.median(ratios):.2f} ({min(ratios):.2f}..{max(ratios):.2f}) | {ident} |")
EOF
