#!/usr/bin/env bash
# GEMM GFLOP/s of every medmoe backend this CPU has (kernels-cpu example bench_gemm: auto, avx2,
# gemm-crate, amx-bf16) next to numpy f32, torch f32, torch bf16 and torch bf16 with the f32->bf16
# casts timed (tools/bench_gemm_torch.py), same shapes and threads, interleaved rounds (ours,
# then the references, per round). Each round first waits until the 1-minute load average is below
# --max-load (the machines are shared), and records the load it started at. Prints the CPU model and
# ISA, then a markdown table of medians over rounds with [min .. max].
#
# Usage: tools/bench_gemm_isa.sh [--shapes MxKxN,...] [--threads N] [--rounds R] [--trans NN]
#                                [--max-load L] [--max-wait SECONDS]
# Env:   PYTHON (default pyenv/bin/python, else python3), SKIP_BUILD=1 (use the built example),
#        CARGO_TARGET_DIR (default target).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench_common.sh"

SHAPES="2048x256x768,2048x768x256,512x2048x6144"
THREADS=2
ROUNDS=5
TRANS=NN
MAX_LOAD=1.5
MAX_WAIT=3600
while [[ $# -gt 0 ]]; do
    case "$1" in
        --shapes) SHAPES="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --trans) TRANS="$2"; shift 2 ;;
        --max-load) MAX_LOAD="$2"; shift 2 ;;
        --max-wait) MAX_WAIT="$2"; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

need_python_modules numpy torch
EXAMPLE="${CARGO_TARGET_DIR:-target}/release/examples/bench_gemm"
if [[ "${SKIP_BUILD:-0}" != "1" ]]; then
    echo "[bench] cargo build --release -p kernels-cpu --example bench_gemm" >&2
    cargo build --release -p kernels-cpu --example bench_gemm >&2
fi
[[ -x "$EXAMPLE" ]] || die "$EXAMPLE not found (build it, or set CARGO_TARGET_DIR)"

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

load1() { cut -d' ' -f1 /proc/loadavg; }
wait_quiet() {
    local waited=0
    while awk -v l="$(load1)" -v m="$MAX_LOAD" 'BEGIN { exit !(l >= m) }'; do
        if (( waited >= MAX_WAIT )); then
            echo "[bench] load $(load1) still >= $MAX_LOAD after ${waited}s: running anyway (recorded)" >&2
            return
        fi
        sleep 20
        waited=$((waited + 20))
    done
}

for ((r = 0; r < ROUNDS; r++)); do
    wait_quiet
    LOAD="$(load1)"
    echo "[bench] round $r, load $LOAD: bench_gemm, then numpy/torch" >&2
    "$EXAMPLE" --shapes "$SHAPES" --threads "$THREADS" --trans "$TRANS" --rounds 1 |
        sed "s/}\$/,\"bench_round\":$r,\"load\":$LOAD}/" >>"$TMP/all.jsonl"
    "$PYTHON" tools/bench_gemm_torch.py --shapes "$SHAPES" --threads "$THREADS" --trans "$TRANS" |
        sed "s/}\$/, \"bench_round\": $r, \"load\": $LOAD}/" >>"$TMP/all.jsonl"
done

MODEL="$(lscpu | sed -n 's/^Model name: *//p')"
FLAGS="$(grep -m1 '^flags' /proc/cpuinfo)"
ISA=""
for f in avx2 fma avx512f avx512_bf16 amx_tile amx_bf16; do
    [[ " $FLAGS " == *" $f "* ]] && ISA="$ISA $f"
done
echo "CPU: $MODEL, $(nproc) CPUs; ISA:${ISA}"

"$PYTHON" - "$TMP/all.jsonl" "$SHAPES" "$THREADS" "$TRANS" <<'PY'
import collections, json, statistics, sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
shapes = [tuple(int(x) for x in s.lower().split("x")) for s in sys.argv[2].split(",") if s]
order = ["medmoe-auto", "medmoe-avx2", "medmoe-gemm-crate", "medmoe-amx-bf16",
         "numpy", "torch-f32", "torch-bf16", "torch-bf16-cast"]
g = collections.defaultdict(list)
for r in rows:
    g[(r["impl"], (r["m"], r["k"], r["n"]))].append(r["gflops"])
impls = [i for i in order if any(k[0] == i for k in g)]
loads = sorted({r["load"] for r in rows})
auto = next((r["resolved"] for r in rows if r["impl"] == "medmoe-auto"), "?")
print(f"\nGEMM GFLOP/s, {sys.argv[3]} threads, trans {sys.argv[4]}, {len({r['bench_round'] for r in rows})} interleaved "
      f"rounds, median [min .. max]; load average at round start {min(loads)} .. {max(loads)}; auto = {auto}\n")
print("| M x K x N | " + " | ".join(impls) + " | amx-bf16 / torch-bf16 |")
print("|---|" + "---:|" * (len(impls) + 1))
med = {}
for s in shapes:
    cells = []
    for i in impls:
        v = g.get((i, s), [])
        if v:
            med[(i, s)] = statistics.median(v)
            cells.append(f"{med[(i, s)]:.0f} [{min(v):.0f} .. {max(v):.0f}]")
        else:
            cells.append("n/a")
    a, t = med.get(("medmoe-amx-bf16", s)), med.get(("torch-bf16", s))
    ratio = f"{a / t:.2f}" if a and t else "n/a"
    print(f"| {s[0]}x{s[1]}x{s[2]} | " + " | ".join(cells) + f" | {ratio} |")
PY
