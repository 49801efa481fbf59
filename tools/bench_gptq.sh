#!/usr/bin/env bash
# Wall time of `moe-cli quantize` on the tiny MoE preset (random weights), GPTQ 4-bit g128 with
# act-order and RTN, on a calibration pack; one JSON line per method. Run on a quiet machine:
#   tools/bench_gptq.sh [SAMPLES]            (default 64 sequences of the pack below)
# Builds moe-cli (release), makes a tiny world + tokenizer + pack and a random tiny MoE under
# $WORK (default a temporary directory).
set -euo pipefail
cd "$(dirname "$0")/.."
SAMPLES=${1:-64}
WORK=${WORK:-$(mktemp -d)}
cargo build --release -p cli >/dev/null
M=target/release/moe-cli
[ -d "$WORK/world" ] || $M data world --seed 0 --tokens 300000 --out "$WORK/world" >/dev/null
[ -d "$WORK/tok" ] || $M data tokenizer --corpus "$WORK/world" --vocab 4096 --out "$WORK/tok" >/dev/null
[ -d "$WORK/pack" ] || $M data pack --corpus "$WORK/world" --tokenizer "$WORK/tok" --seq-len 256 --out "$WORK/pack" >/dev/null
[ -d "$WORK/dense" ] || $M init --preset tiny-dense --out "$WORK/dense" >/dev/null
[ -d "$WORK/moe" ] || $M surgery --model "$WORK/dense" --preset tiny-k1p1-n16 --importance magnitude --out "$WORK/moe" >/dev/null
for method in gptq rtn; do
  out="$WORK/q-$method-$$"
  start=$(date +%s.%N)
  $M quantize --method $method --model "$WORK/moe" --calib "$WORK/pack" --samples "$SAMPLES" --bits 4 --group 32 --act-order --out "$out" 2>/dev/null
  end=$(date +%s.%N)
  echo "{\"bench\":\"gptq\",\"method\":\"$method\",\"samples\":$SAMPLES,\"seq\":256,\"wall_s\":$(echo "$end - $start" | bc)}"
  rm -rf "$out"
done
