#!/usr/bin/env bash
# GGUF export at scale: a Qwen3-1.7B-shaped random bf16 checkpoint -> surgery to the seed preset
# (qwen3-1.7b-k1p1-n16: shared 1216 + 16 routed x 512) -> `moe-cli export gguf --type q5_k_m`, under
# /usr/bin/time -v (wall, peak RSS). The MoE input is about 4.6 GB (bf16); the export streams it
# from its memory map a chunk of rows at a time and drops each tensor's pages once written, so
# peak RSS should stay far below the model size.
#
# Needs a quiet machine, about 14 GB of free disk under $WORK (default /tmp/bench_export) and the
# venv (tools/make_qwen3_1p7b_random.py uses torch). Usage, from the repository root:
#   tools/bench_export.sh                       # builds target/release/moe-cli first
#   SKIP_BUILD=1 TYPES="q5_k_m q8_0" tools/bench_export.sh
#   KEEP=1 tools/bench_export.sh                # keep $WORK afterwards
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench_common.sh"

WORK="${WORK:-/tmp/bench_export}"
TYPES="${TYPES:-q5_k_m}"
need_python_modules torch
build_cli
mkdir -p "$WORK"
if [[ ! -d "$WORK/dense" ]]; then
    "$PYTHON" tools/make_qwen3_1p7b_random.py --out "$WORK/dense"
fi
if [[ ! -d "$WORK/moe" ]]; then
    "$MOE_CLI" --threads 2 surgery --model "$WORK/dense" --preset qwen3-1.7b-k1p1-n16 --importance magnitude \
        --out "$WORK/moe"
fi
echo "input: $(du -sb "$WORK/moe" | cut -f1) bytes (MoE checkpoint, bf16)"
for t in $TYPES; do
    rm -f "$WORK/moe.$t.gguf"
    /usr/bin/time -v "$MOE_CLI" --threads 2 export gguf --model "$WORK/moe" --type "$t" --no-tokenizer \
        --out "$WORK/moe.$t.gguf" 2> "$WORK/time.$t.txt" | tee "$WORK/out.$t.txt"
    grep -E "Elapsed \(wall clock\)|Maximum resident set size|User time|System time" "$WORK/time.$t.txt"
    echo "output: $(stat -c %s "$WORK/moe.$t.gguf") bytes"
    rm -f "$WORK/moe.$t.gguf"
done
if [[ "${KEEP:-0}" != "1" ]]; then
    rm -rf "$WORK"
fi
