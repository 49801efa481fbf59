#!/usr/bin/env bash
# Training step: medmoe (moe-cli bench step) next to transformers/PyTorch (tools/bench_torch_step.py),
# same preset, batch, seq and threads, same run. With --rounds R the two run interleaved R times
# (ours, [ours on --active], reference per round); with --active PRESET ours also runs that dense
# preset each round (e.g. tiny-dense-active, the active-parameter equivalent of tiny-k1p1-n16).
# Prints markdown tables: each round, then median and spread (min..max) of the values and of the
# per-round ratios ours/reference (and preset step / active step).
#
# With --precision bf16 ours runs `bench step --precision bf16` (bf16 GEMM operands, f32 accumulation
# and master weights) and the reference trains under torch.autocast("cpu", dtype=torch.bfloat16).
#
# Usage: tools/bench_step.sh [--preset tiny-dense] [--batch 8] [--seq 256] [--threads 2]
#                            [--rounds 1] [--active PRESET] [--steps 6] [--warmup 2] [--precision f32|bf16]
# Env:   PYTHON (default pyenv/bin/python, else python3), MOE_CLI (default target/release/moe-cli),
#        SKIP_BUILD=1 to skip `cargo build --release -p cli`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench_common.sh"

PRESET=tiny-dense
BATCH=8
SEQ=256
THREADS=2
ROUNDS=1
ACTIVE=""
STEPS=6
WARMUP=2
PRECISION=f32
while [[ $# -gt 0 ]]; do
    case "$1" in
        --preset) PRESET="$2"; shift 2 ;;
        --batch) BATCH="$2"; shift 2 ;;
        --seq) SEQ="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --active) ACTIVE="$2"; shift 2 ;;
        --steps) STEPS="$2"; shift 2 ;;
        --warmup) WARMUP="$2"; shift 2 ;;
        --precision) PRECISION="$2"; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer, got '$ROUNDS'"
[[ "$PRECISION" == f32 || "$PRECISION" == bf16 ]] || die "--precision must be f32 or bf16, got '$PRECISION'"

need_python_modules torch transformers
build_cli

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

COMMON=(--batch "$BATCH" --seq "$SEQ" --steps "$STEPS" --warmup "$WARMUP" --precision "$PRECISION")
load() { cut -d' ' -f1-3 /proc/loadavg; }
echo "load_start $(load)" >"$TMP/load.txt"
for ((r = 1; r <= ROUNDS; r++)); do
    echo "[bench] round $r/$ROUNDS: $MOE_CLI --threads $THREADS bench step --preset $PRESET ${COMMON[*]}" >&2
    "$MOE_CLI" --threads "$THREADS" bench step --preset "$PRESET" "${COMMON[@]}" | tee -a "$TMP/ours.jsonl" >&2
    if [[ -n "$ACTIVE" ]]; then
        echo "[bench] round $r/$ROUNDS: $MOE_CLI --threads $THREADS bench step --preset $ACTIVE ${COMMON[*]}" >&2
        "$MOE_CLI" --threads "$THREADS" bench step --preset "$ACTIVE" "${COMMON[@]}" | tee -a "$TMP/active.jsonl" >&2
    fi
    echo "[bench] round $r/$ROUNDS: $PYTHON tools/bench_torch_step.py --preset $PRESET --threads $THREADS ${COMMON[*]}" >&2
    "$PYTHON" tools/bench_torch_step.py --preset "$PRESET" --threads "$THREADS" "${COMMON[@]}" |
        tee -a "$TMP/ref.jsonl" >&2
done
echo "load_end $(load)" >>"$TMP/load.txt"
touch "$TMP/active.jsonl"

"$PYTHON" - "$TMP" <<'PY'
import json, os, statistics, sys

tmp = sys.argv[1]

def load(name, impl):
    rows = []
    for line in open(os.path.join(tmp, name)):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if r.get("bench") == "step" and r.get("impl") == impl:
            rows.append(r)
    return rows

ours, ref, active = load("ours.jsonl", "medmoe"), load("ref.jsonl", "pytorch"), load("active.jsonl", "medmoe")
if not ours or len(ours) != len(ref):
    print(f"error: missing step results: medmoe {len(ours)}, pytorch {len(ref)}", file=sys.stderr)
    sys.exit(1)
for k in ("preset", "batch", "seq", "threads", "precision"):
    if ours[0].get(k) != ref[0].get(k):
        print(f"warning: {k} differs: medmoe={ours[0].get(k)} pytorch={ref[0].get(k)}", file=sys.stderr)
loads = dict(line.split(" ", 1) for line in open(os.path.join(tmp, "load.txt")).read().splitlines())
r0 = ref[0]
print(f'Training step, preset {r0["preset"]}, batch {r0["batch"]}, seq {r0["seq"]}, {r0["threads"]} threads, '
      f'{len(ours)} round(s) interleaved; reference: transformers {r0.get("transformers", "?")} '
      f'{r0.get("arch", "")} / torch {r0.get("torch", "?")} eager, '
      + ('f32' if r0.get("precision", "f32") == "f32" else 'torch.autocast("cpu", dtype=torch.bfloat16)')
      + f'; medmoe --precision {ours[0].get("precision", "f32")} (GEMM {ours[0].get("gemm", "?")})')
print(f'load average (1/5/15 min) at start {loads.get("load_start", "?")}, at end {loads.get("load_end", "?")}\n')

has_active = len(active) == len(ours)
head = "| round | medmoe tokens/s | pytorch tokens/s | ours/ref | medmoe step s | pytorch step s |"
sep = "|---|---:|---:|---:|---:|---:|"
if has_active:
    head += f' {active[0]["preset"]} step s | step / active step |'
    sep += "---:|---:|"
print(head)
print(sep)
ratio, step_ratio = [], []
for i, (o, r) in enumerate(zip(ours, ref)):
    ratio.append(o["tokens_per_s"] / r["tokens_per_s"])
    row = f'| {i + 1} | {o["tokens_per_s"]:.1f} | {r["tokens_per_s"]:.1f} | {ratio[-1]:.2f} | {o["step_s"]:.4f} | {r["step_s"]:.4f} |'
    if has_active:
        step_ratio.append(o["step_s"] / active[i]["step_s"])
        row += f' {active[i]["step_s"]:.4f} | {step_ratio[-1]:.2f} |'
    print(row)

def summary(label, xs, fmt):
    xs = [x for x in xs if isinstance(x, (int, float))]
    if not xs:
        return f"| {label} | n/a | n/a |"
    return f"| {label} | {fmt.format(statistics.median(xs))} | {fmt.format(min(xs))} .. {fmt.format(max(xs))} |"

print("\n| metric | median | spread (min .. max) |")
print("|---|---:|---:|")
print(summary("medmoe tokens/s", [o["tokens_per_s"] for o in ours], "{:.1f}"))
print(summary("pytorch tokens/s", [r["tokens_per_s"] for r in ref], "{:.1f}"))
print(summary("**ours/ref tokens/s** (per round)", ratio, "{:.2f}"))
print(summary("medmoe step s", [o["step_s"] for o in ours], "{:.4f}"))
print(summary("pytorch step s", [r["step_s"] for r in ref], "{:.4f}"))
print(summary("medmoe peak RSS MB", [o.get("peak_rss_mb") for o in ours], "{:.1f}"))
print(summary("pytorch peak RSS MB", [r.get("peak_rss_mb") for r in ref], "{:.1f}"))
if has_active:
    print(summary(f'{active[0]["preset"]} step s', [a["step_s"] for a in active], "{:.4f}"))
    print(summary(f'{active[0]["preset"]} tokens/s', [a["tokens_per_s"] for a in active], "{:.1f}"))
    print(summary(f'**{ours[0]["preset"]} step / {active[0]["preset"]} step** (per round)', step_ratio, "{:.2f}"))
PY
