#!/usr/bin/env bash
# Training step: medmoe (moe-cli bench step) next to transformers/PyTorch (tools/bench_torch_step.py),
# same preset, batch, seq and threads, same run. Prints a markdown table with the ratio ours/reference.
#
# Usage: tools/bench_step.sh [--preset tiny-dense] [--batch 8] [--seq 256] [--threads 2]
# Env:   PYTHON (default pyenv/bin/python, else python3), MOE_CLI (default target/release/moe-cli),
#        SKIP_BUILD=1 to skip `cargo build --release -p cli`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench_common.sh"

PRESET=tiny-dense
BATCH=8
SEQ=256
THREADS=2
while [[ $# -gt 0 ]]; do
    case "$1" in
        --preset) PRESET="$2"; shift 2 ;;
        --batch) BATCH="$2"; shift 2 ;;
        --seq) SEQ="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

need_python_modules torch transformers
build_cli

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

ARGS=(--preset "$PRESET" --batch "$BATCH" --seq "$SEQ" --threads "$THREADS")
echo "[bench] $MOE_CLI bench step ${ARGS[*]}" >&2
"$MOE_CLI" bench step "${ARGS[@]}" | tee "$TMP/ours.jsonl" >&2
echo "[bench] $PYTHON tools/bench_torch_step.py ${ARGS[*]}" >&2
"$PYTHON" tools/bench_torch_step.py "${ARGS[@]}" | tee "$TMP/ref.jsonl" >&2

"$PYTHON" - "$TMP/ours.jsonl" "$TMP/ref.jsonl" <<'PY'
import json, sys

def load(path, impl):
    found = None
    for line in open(path):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if r.get("bench") == "step" and r.get("impl") == impl:
            found = r
    return found

o, r = load(sys.argv[1], "medmoe"), load(sys.argv[2], "pytorch")
if not o or not r:
    print(f"error: missing step result: medmoe={'ok' if o else 'missing'} pytorch={'ok' if r else 'missing'}",
          file=sys.stderr)
    sys.exit(1)
for k in ("preset", "batch", "seq", "threads"):
    if o.get(k) != r.get(k):
        print(f"warning: {k} differs: medmoe={o.get(k)} pytorch={r.get(k)}", file=sys.stderr)
print(f'Training step, preset {r["preset"]}, batch {r["batch"]}, seq {r["seq"]}, {r["threads"]} threads, '
      f'reference: transformers {r.get("transformers", "?")} / torch {r.get("torch", "?")} f32 eager\n')
print("| metric | medmoe | pytorch | ours/ref |")
print("|---|---:|---:|---:|")
for key, label, fmt in (("tokens_per_s", "tokens/s (higher is better)", "{:.1f}"),
                        ("step_s", "step s, median (lower is better)", "{:.4f}"),
                        ("peak_rss_mb", "peak RSS MB (lower is better)", "{:.1f}")):
    ov, rv = o.get(key), r.get(key)
    ratio = f"{ov / rv:.2f}" if isinstance(ov, (int, float)) and isinstance(rv, (int, float)) and rv else "n/a"
    ovs = fmt.format(ov) if isinstance(ov, (int, float)) else "n/a"
    rvs = fmt.format(rv) if isinstance(rv, (int, float)) else "n/a"
    print(f"| {label} | {ovs} | {rvs} | {ratio} |")
PY
