#!/usr/bin/env bash
# Tokenize + pack throughput: `moe-cli data pack` vs HF `tokenizers` from Python (tools/bench_tokenize.py)
# on the same generated corpus and the same trained tokenizer, one after the other in the same run.
# Prints a markdown table (stdout); raw JSON lines go to stderr.
#
#   tools/bench_tokenize.sh [--tokens 2000000] [--vocab 4096] [--seq-len 2048] [--threads 2] [--runs 3]
set -euo pipefail
source "$(dirname "$0")/bench_common.sh"

TOKENS=2000000 VOCAB=4096 SEQ=2048 THREADS=2 RUNS=3
while [[ $# -gt 0 ]]; do
    case "$1" in
        --tokens) TOKENS="$2"; shift 2 ;;
        --vocab) VOCAB="$2"; shift 2 ;;
        --seq-len) SEQ="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        --runs) RUNS="$2"; shift 2 ;;
        *) die "unknown argument $1" ;;
    esac
done

need_python_modules numpy tokenizers
build_cli
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

echo "[bench] world ($TOKENS tokens) and tokenizer (vocab $VOCAB)" >&2
"$MOE_CLI" --threads "$THREADS" data world --seed 0 --tokens "$TOKENS" --out "$WORK/world" >&2
"$MOE_CLI" --threads "$THREADS" data tokenizer --corpus "$WORK/world" --vocab "$VOCAB" --out "$WORK/tok" >&2

best() { # best (max) tokens_per_s of JSON lines on stdin, and the last line's other fields
    "$PYTHON" -c 'import json,sys; L=[json.loads(l) for l in sys.stdin if l.startswith("{")]; b=max(L,key=lambda d:d["tokens_per_s"]); print(json.dumps(b))'
}

ours_lines="" ref_lines=""
for r in $(seq "$RUNS"); do
    rm -rf "$WORK/pack"
    line=$("$MOE_CLI" --threads "$THREADS" data pack --corpus "$WORK/world" --tokenizer "$WORK/tok" \
        --seq-len "$SEQ" --out "$WORK/pack" --json | grep '^{')
    echo "$line" >&2
    ours_lines+="$line"$'\n'
    line=$("$PYTHON" tools/bench_tokenize.py --corpus "$WORK/world" --tokenizer "$WORK/tok" --seq-len "$SEQ" --threads "$THREADS")
    echo "$line" >&2
    ref_lines+="$line"$'\n'
done
ours=$(printf '%s' "$ours_lines" | best)
ref=$(printf '%s' "$ref_lines" | best)

"$PYTHON" - "$ours" "$ref" "$RUNS" <<'PY'
import json, sys
o, r, runs = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
same = "yes" if o["tokens_sha256"] == r["tokens_sha256"] else "NO"
print(f"| corpus tokens | seq_len | threads | medmoe tokens/s | HF tokenizers (Python {r['tokenizers']}) tokens/s | ratio | identical tokens |")
print("|---|---|---|---|---|---|---|")
print(f"| {o['tokens']} | {o['seq_len']} | {o['threads']} | {o['tokens_per_s']:.0f} | {r['tokens_per_s']:.0f} | "
      f"{o['tokens_per_s'] / r['tokens_per_s']:.2f}x | {same} |")
print(f"\nbest of {runs} runs each; timed: load tokenizer + read JSONL + tokenize + pack + write.")
if same != "yes":
    sys.exit("token streams differ: the two sides did not tokenize the same way")
PY
