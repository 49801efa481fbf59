#!/usr/bin/env bash
# `moe-cli data prepare` at scale: a corpus generated from synthetic worlds (several seeds) with
# injected exact / near duplicates, PII and contaminated documents (tools/gen_prepare_corpus.py),
# prepared with one thread under /usr/bin/time -v; prints the prepare JSON line (MB/s), the peak
# RSS and the recall on the injected cases (tools/check_prepare_bench.py). Optionally packs the
# prepared train split (--pack) with a tokenizer trained on world 0.
#
#   tools/bench_prepare.sh [--worlds 20] [--tokens 25000000] [--threads 1] [--work DIR] [--keep] [--pack]
set -euo pipefail
source "$(dirname "$0")/bench_common.sh"

WORLDS=20 TOKENS=25000000 THREADS=1 WORK="" KEEP=0 PACK=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --worlds) WORLDS="$2"; shift 2 ;;
        --tokens) TOKENS="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        --work) WORK="$2"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --pack) PACK=1; shift ;;
        *) die "unknown argument $1" ;;
    esac
done
[[ -x /usr/bin/time ]] || die "/usr/bin/time is needed for the peak RSS (apt-get install time)"
build_cli
if [[ -z "$WORK" ]]; then
    WORK="$(mktemp -d)"
fi
if [[ "$KEEP" == "0" ]]; then
    trap 'rm -rf "$WORK"' EXIT
fi
mkdir -p "$WORK"

worlds=()
for s in $(seq 0 $((WORLDS - 1))); do
    if [[ ! -d "$WORK/world-$s" ]]; then
        echo "[bench] world seed $s ($TOKENS tokens)" >&2
        "$MOE_CLI" --threads "$THREADS" data world --seed "$s" --tokens "$TOKENS" --out "$WORK/world-$s" >&2
    fi
    worlds+=("$WORK/world-$s")
done
if [[ ! -f "$WORK/gen/truth.json" ]]; then
    echo "[bench] corpus with injected cases" >&2
    "$PYTHON" tools/gen_prepare_corpus.py --worlds "${worlds[@]}" --out "$WORK/gen" >&2
fi
du -sb "$WORK/gen/corpus" >&2
rm -rf "$WORK/prepared" "$WORK/.prepared.prepare-work"
echo "[bench] prepare (threads $THREADS)" >&2
/usr/bin/time -v "$MOE_CLI" --threads "$THREADS" data prepare --config "$WORK/gen/prepare.json" \
    --out "$WORK/prepared" --json >"$WORK/prepare.out" 2>"$WORK/prepare.time"
cat "$WORK/prepare.out" >&2
grep '^{' "$WORK/prepare.out"
grep -E "Maximum resident|Elapsed \(wall" "$WORK/prepare.time"
"$PYTHON" tools/check_prepare_bench.py --truth "$WORK/gen/truth.json" --out "$WORK/prepared"
if [[ "$PACK" == "1" ]]; then
    "$MOE_CLI" --threads "$THREADS" data tokenizer --corpus "$WORK/world-0" --vocab 4096 --out "$WORK/tok" >&2
    rm -rf "$WORK/pack"
    /usr/bin/time -v "$MOE_CLI" --threads "$THREADS" data pack --corpus "$WORK/prepared/train" \
        --tokenizer "$WORK/tok" --seq-len 4096 --out "$WORK/pack" --json >"$WORK/pack.out" 2>"$WORK/pack.time"
    grep '^{' "$WORK/pack.out"
    grep -E "Maximum resident|Elapsed \(wall" "$WORK/pack.time"
fi
