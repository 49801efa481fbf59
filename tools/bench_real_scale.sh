#!/usr/bin/env bash
# Issue 18, scale benchmark: a Qwen3-0.6B-shaped random checkpoint with Qwen's vocabulary (151,936 rows)
# as an HF base directory through the pipeline: data (the synthetic world packed at seq 512 with a
# 4096-token BPE, the base directory's tokenizer) -> base (import + evaluation) -> importance ->
# moe-init (surgery into qwen3-0.6b-k1p1-n16) -> a few p0 distillation steps at seq 512. Prints each
# stage's seconds, p0's tokens/s and the peak RSS of the whole run (/usr/bin/time -v).
#
# Usage: tools/bench_real_scale.sh [--work DIR] [--steps 3] [--micro-batch 2] [--threads 2]
# Env:   MOE_CLI (default target/release/moe-cli), SKIP_BUILD=1 to skip `cargo build --release -p cli`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench_common.sh"

WORK=/tmp/medmoe-real-scale
STEPS=3
MICRO=2
THREADS=2
while [[ $# -gt 0 ]]; do
    case "$1" in
        --work) WORK="$2"; shift 2 ;;
        --steps) STEPS="$2"; shift 2 ;;
        --micro-batch) MICRO="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
build_cli
rm -rf "$WORK"
mkdir -p "$WORK"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# 1. A tokenizer of the world (the embedded default's data stage) and the random 0.6B-shaped base.
echo "[bench] tokenizer: run all --until data (embedded default)" >&2
"$MOE_CLI" --threads "$THREADS" run all --until data --run-dir "$WORK/tok" --quiet >&2
echo "[bench] init --preset qwen3-0.6b" >&2
"$MOE_CLI" --threads "$THREADS" init --preset qwen3-0.6b --seed 1 --out "$WORK/base" >&2
cp "$WORK/tok/data/tokenizer/"tokenizer*.json "$WORK/base/"

# 2. The run config and phase files: seq 512, a few p0 steps, small evaluations.
python3 - "$ROOT" "$WORK" "$STEPS" "$MICRO" <<'PY'
import json, sys
root, work, steps, micro = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
run = json.load(open(f"{root}/configs/runs/tiny.json"))
run.update({"preset": "bench-0.6b", "base_model": f"{work}/base", "moe_model": "qwen3-0.6b-k1p1-n16",
            "seq_len": 512, "importance_batches": 2, "importance_batch": 2})
json.dump(run, open(f"{work}/run.json", "w"), indent=2)
small_eval = {"every": 0, "dev_seqs": 4, "mcq_items": 8, "final_mcq_items": 16, "final_dev_seqs": 4}
for phase in ["base", "p0"]:
    p = json.load(open(f"{root}/configs/phases/{phase}.json"))
    tps = 512 * micro
    p.setdefault("presets", {})["bench-0.6b"] = {
        "seq_len": 512, "micro_batch": micro, "tokens_per_step": tps, "tokens": tps * steps,
        "checkpoint_every": 1000, "eval": small_eval,
    }
    json.dump(p, open(f"{work}/{phase}.json", "w"), indent=2)
PY

# 3. The run, timed.
echo "[bench] run all --until p0 (HF base $WORK/base)" >&2
/usr/bin/time -v -o "$WORK/time.txt" "$MOE_CLI" --threads "$THREADS" run all --until p0 --run-dir "$WORK/run" \
    --config "$WORK/run.json" --phase-config "base=$WORK/base.json" --phase-config "p0=$WORK/p0.json" --quiet >&2

python3 - "$WORK" <<'PY'
import json, re, sys
work = sys.argv[1]
s = json.load(open(f"{work}/run/summary.json"))
t = open(f"{work}/time.txt").read()
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1)) / 1024 / 1024
wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", t).group(1)
print("| stage | status | seconds |")
print("|---|---|---:|")
for st in s["stages"]:
    print(f"| {st['stage']} | {st['status']} | {st['seconds']:.1f} |")
p0 = json.load(open(f"{work}/run/p0/summary.json"))
print(f"\np0: {p0['steps']} steps, {p0['tokens']} tokens in {p0['seconds']:.1f} s "
      f"(incl. its final evaluation and checkpoint): {p0['tokens'] / p0['seconds']:.0f} tokens/s; "
      f"final loss {p0['final_loss']:.3f}")
print(f"whole run: wall {wall}, peak RSS {rss:.2f} GiB")
PY
