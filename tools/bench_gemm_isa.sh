#!/usr/bin/env bash
# GEMM GFLOP/s of every medmoe backend this CPU has (kernels-cpu example bench_gemm: auto, avx2,
# gemm-crate, amx-bf16, avx512-bf16) next to numpy f32, torch f32, torch bf16 and torch bf16 with the f32->bf16
# casts timed (tools/bench_gemm_torch.py), same shapes and threads, interleaved rounds (ours,
# then the references, per round). The machines are shared, so each program run first waits until
# the 1-minute load average is below --max-load, and measures the CPU time other processes (and the
# hypervisor: steal) took while it ran (/proc/stat busy time minus its own); a run where others took
# more than --max-other CPUs on average is repeated (up to --retries times, then kept and flagged).
# Prints the CPU model and ISA, then a markdown table of medians over rounds with [min .. max].
#
# Usage: tools/bench_gemm_isa.sh [--shapes MxKxN,...] [--threads N] [--rounds R] [--trans NN]
#                                [--max-load L] [--max-wait SECONDS] [--max-other CPUS] [--retries N]
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
MAX_OTHER=0.1
RETRIES=6
while [[ $# -gt 0 ]]; do
    case "$1" in
        --shapes) SHAPES="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --trans) TRANS="$2"; shift 2 ;;
        --max-load) MAX_LOAD="$2"; shift 2 ;;
        --max-wait) MAX_WAIT="$2"; shift 2 ;;
        --max-other) MAX_OTHER="$2"; shift 2 ;;
        --retries) RETRIES="$2"; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

need_python_modules numpy torch
EXAMPLE="${CARGO_TARGET_DIR:-target}/release/examples/bench_gemm"
PEAK="${CARGO_TARGET_DIR:-target}/release/examples/fma_peak"
if [[ "${SKIP_BUILD:-0}" != "1" ]]; then
    echo "[bench] cargo build --release -p kernels-cpu --example bench_gemm --example fma_peak" >&2
    cargo build --release -p kernels-cpu --example bench_gemm --example fma_peak >&2
fi
[[ -x "$EXAMPLE" ]] || die "$EXAMPLE not found (build it, or set CARGO_TARGET_DIR)"
[[ -x "$PEAK" ]] || die "$PEAK not found (build it, or set CARGO_TARGET_DIR)"

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

# Busy CPU seconds of the whole machine so far (user nice system irq softirq steal).
busy() { awk -v hz="$(getconf CLK_TCK)" '/^cpu /{ printf "%.2f", ($2 + $3 + $4 + $7 + $8 + $9) / hz }' /proc/stat; }

# run_clean ROUND CMD...: runs CMD (JSON lines on stdout) until other processes took at most
# MAX_OTHER CPUs during it, then appends its lines, tagged with round, load and others' CPUs.
run_clean() {
    local round="$1" try load b0 b1 t0 t1 own other
    shift
    for ((try = 0; try <= RETRIES; try++)); do
        wait_quiet
        load="$(load1)"
        b0="$(busy)"; t0="$(date +%s.%N)"
        /usr/bin/time -f "%U %S" -o "$TMP/time" "$@" >"$TMP/out"
        b1="$(busy)"; t1="$(date +%s.%N)"
        own="$(awk '{ print $1 + $2 }' "$TMP/time")"
        other="$(awk -v b0="$b0" -v b1="$b1" -v own="$own" -v t0="$t0" -v t1="$t1" \
            'BEGIN { o = (b1 - b0 - own) / (t1 - t0); printf "%.2f", (o < 0 ? 0 : o) }')"
        echo "[bench] round $round: $1 load $load, others took $other CPUs" >&2
        if awk -v o="$other" -v m="$MAX_OTHER" 'BEGIN { exit !(o <= m) }'; then
            break
        fi
    done
    sed "s/}\$/, \"bench_round\": $round, \"load\": $load, \"others_cpu\": $other}/" "$TMP/out" >>"$TMP/all.jsonl"
}

for ((r = 0; r < ROUNDS; r++)); do
    run_clean "$r" "$EXAMPLE" --shapes "$SHAPES" --threads "$THREADS" --trans "$TRANS" --rounds 1
    run_clean "$r" "$PYTHON" tools/bench_gemm_torch.py --shapes "$SHAPES" --threads "$THREADS" --trans "$TRANS"
done
# The arithmetic peak (register-only FMA / vdpbf16ps loops), for the "% of peak" columns.
run_clean -1 "$PEAK" --threads "$THREADS" --rounds 3

MODEL="$(lscpu | sed -n 's/^Model name: *//p')"
FLAGS="$(grep -m1 '^flags' /proc/cpuinfo)"
ISA=""
for f in avx2 fma avx512f avx512_bf16 amx_tile amx_bf16; do
    [[ " $FLAGS " == *" $f "* ]] && ISA="$ISA $f"
done
echo "CPU: $MODEL, $(nproc) CPUs; ISA:${ISA}"

"$PYTHON" - "$TMP/all.jsonl" "$SHAPES" "$THREADS" "$TRANS" <<'PY'
import collections, json, statistics, sys

all_rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
rows = [r for r in all_rows if r["bench"] == "gemm"]
threads = int(sys.argv[3])
peak = {}
for r in all_rows:
    if r["bench"] == "peak" and r["threads"] == threads:
        peak.setdefault(r["isa"], []).append(r["gflops"])
peak = {isa: statistics.median(v) for isa, v in peak.items()}
f32_peak = peak.get("avx512f-fma") or peak.get("avx2-fma")
bf16_peak = peak.get("avx512-bf16-dp")
shapes = [tuple(int(x) for x in s.lower().split("x")) for s in sys.argv[2].split(",") if s]
order = ["medmoe-auto", "medmoe-avx2", "medmoe-gemm-crate", "medmoe-amx-bf16", "medmoe-avx512-bf16",
         "numpy", "torch-f32", "torch-bf16", "torch-bf16-cast"]
g = collections.defaultdict(list)
for r in rows:
    g[(r["impl"], (r["m"], r["k"], r["n"]))].append(r["gflops"])
impls = [i for i in order if any(k[0] == i for k in g)]
loads = sorted({r["load"] for r in rows})
others = sorted({r["others_cpu"] for r in rows})
auto = next((r["resolved"] for r in rows if r["impl"] == "medmoe-auto"), "?")
print(f"\nGEMM GFLOP/s, {sys.argv[3]} threads, trans {sys.argv[4]}, {len({r['bench_round'] for r in rows})} interleaved "
      f"rounds, median [min .. max]; load average at run start {min(loads)} .. {max(loads)}, CPUs taken by "
      f"other processes during a run {min(others)} .. {max(others)}; auto = {auto}\n")
# The native bf16 backend of this CPU (AMX where it exists, else AVX512-BF16) against torch bf16.
native = next((i for i in ("medmoe-amx-bf16", "medmoe-avx512-bf16") if i in impls), None)
native_name = native[len("medmoe-"):] if native else "bf16"
print("Arithmetic peak, %d threads (fma_peak, median of 3): " % threads
      + ", ".join(f"{isa} {g:.0f} GFLOP/s" for isa, g in sorted(peak.items())) + "\n")
print("| M x K x N | " + " | ".join(impls) + f" | {native_name} / torch-bf16 | best f32 / numpy | best f32 / f32 peak | "
      f"{native_name} / bf16 peak |")
print("|---|" + "---:|" * (len(impls) + 4))
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
    a, t = med.get((native, s)), med.get(("torch-bf16", s))
    ratio = f"{a / t:.2f}" if a and t else "n/a"
    best = max((med[(i, s)] for i in ("medmoe-auto", "medmoe-avx2", "medmoe-gemm-crate") if (i, s) in med), default=None)
    npy = med.get(("numpy", s))
    vs_numpy = f"{best / npy:.2f}" if best and npy else "n/a"
    of_peak = f"{100 * best / f32_peak:.0f}%" if best and f32_peak else "n/a"
    of_bf16 = f"{100 * a / bf16_peak:.0f}%" if a and bf16_peak and native == "medmoe-avx512-bf16" else "n/a"
    print(f"| {s[0]}x{s[1]}x{s[2]} | " + " | ".join(cells) + f" | {ratio} | {vs_numpy} | {of_peak} | {of_bf16} |")
PY
