#!/usr/bin/env bash
# Training step time with the row kernels (softmax / CE, distillation, RMSNorm, attention tile rows,
# SwiGLU, AdamW) compiled for each instruction set this CPU has (MEDMOE_ROW_ISA=portable|avx2|avx512;
# the GEMMs stay on their own backend), interleaved rounds. All ISAs give the same bits
# (kernels-cpu/tests/row_isa.rs), so only the time differs. Prints a markdown table: median step
# seconds [min .. max] per preset and ISA, and the ratio to the detected (default) ISA.
#
# Usage: tools/bench_row_isa.sh [--presets tiny-dense,tiny-k1p1-n16] [--rounds 5] [--threads 2] [--steps 6]
# Env:   MOE_CLI (default target/release/moe-cli), SKIP_BUILD=1 to skip `cargo build --release -p cli`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench_common.sh"

PRESETS="tiny-dense,tiny-k1p1-n16"
ROUNDS=5
THREADS=2
STEPS=6
while [[ $# -gt 0 ]]; do
    case "$1" in
        --presets) PRESETS="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        --steps) STEPS="$2"; shift 2 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
build_cli

FLAGS="$(grep -m1 '^flags' /proc/cpuinfo)"
ISAS="portable"
[[ " $FLAGS " == *" avx2 "* && " $FLAGS " == *" fma "* ]] && ISAS="$ISAS avx2"
[[ " $FLAGS " == *" avx512f "* && " $FLAGS " == *" avx512bw "* && " $FLAGS " == *" avx512vl "* && " $FLAGS " == *" avx512dq "* ]] && ISAS="$ISAS avx512"
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) CPUs; row ISAs: $ISAS" >&2

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
IFS=',' read -ra PRESET_LIST <<<"$PRESETS"
for ((r = 0; r < ROUNDS; r++)); do
    for preset in "${PRESET_LIST[@]}"; do
        for isa in $ISAS; do
            MEDMOE_ROW_ISA="$isa" "$MOE_CLI" --threads "$THREADS" bench step --preset "$preset" --steps "$STEPS" \
                2>/dev/null | grep '^{' >>"$TMP/all.jsonl"
            echo "[bench] round $r $preset $isa: $(tail -1 "$TMP/all.jsonl" | sed 's/.*"step_s":\([0-9.]*\).*/\1/') s" >&2
        done
    done
done

python3 - "$TMP/all.jsonl" <<'PY'
import collections, json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
g = collections.defaultdict(list)
for r in rows:
    g[(r["preset"], r["row_isa"])].append(r["step_s"])
presets = list(dict.fromkeys(r["preset"] for r in rows))
isas = list(dict.fromkeys(r["row_isa"] for r in rows))
best = isas[-1]
print(f"\nStep seconds, {len({len(v) for v in g.values()}) and max(len(v) for v in g.values())} interleaved rounds, "
      f"median [min .. max]; ratio = median step on the ISA / on {best}\n")
print("| preset | " + " | ".join(isas) + " | " + " | ".join(f"{i} / {best}" for i in isas if i != best) + " |")
print("|---|" + "---:|" * (2 * len(isas) - 1))
for p in presets:
    cells = [f"{statistics.median(g[(p, i)]):.4f} [{min(g[(p, i)]):.4f} .. {max(g[(p, i)]):.4f}]" for i in isas]
    ratios = [f"{statistics.median(g[(p, i)]) / statistics.median(g[(p, best)]):.2f}" for i in isas if i != best]
    print(f"| {p} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
PY
