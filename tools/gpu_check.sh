#!/usr/bin/env bash
# The one script to run on a lent GPU machine (DESIGN.md section 4). Prints one JSON object.
#
#   tools/gpu_check.sh build   # here (no GPU, no CUDA needed): builds every check with
#                              # `--features cuda` into target/gpu-check/ (stripped, ~50 MiB)
#   tools/gpu_check.sh run     # on the GPU machine (no network, no Rust needed): runs them
#   tools/gpu_check.sh         # both, on a machine that has cargo and a GPU
#
# Checks, each with its own time limit (the whole run stays under 8 minutes on one H100):
#   1. kernels-gpu launcher tests with MOE_GPU_TESTS=1 (driver, every kernel loads, SIMT self-test)
#   2. autograd backend parity with MOE_GPU_TESTS=1 (every op on Device::Cuda against Device::Cpu)
#   3. the training step of a small MoE model on CUDA against CPU (medmoe-tests sim_device)
#   4. the grouped expert GEMM at the seed shapes (f32 FMA and bf16 MMA; kernels-gpu example gpu_bench)
#   5. one product training step (`moe-cli bench step --device cuda`) of tiny-k1p1-n16 and of the
#      seed preset qwen3-1.7b-k1p1-n16 (batch 1 x 256)
# With the device tool: run `tools/gpu_check.sh build` here, then on the GPU machine
# `tools/gpu_check.sh run` with carry ["target/gpu-check"]; record the JSON in BENCHMARKS.md.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=target/gpu-check
mode=${1:-all}

build() {
    set -e
    mkdir -p "$out/bin"
    export CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols
    cargo build --release -p cli --features cuda
    cp target/release/moe-cli "$out/bin/"
    cargo build --release -p kernels-gpu --features cuda --example gpu_bench
    cp target/release/examples/gpu_bench "$out/bin/"
    # Test executables: their paths from cargo's JSON messages.
    cargo test --release --no-run -p kernels-gpu -p autograd -p medmoe-tests --features \
        kernels-gpu/cuda,autograd/cuda,medmoe-tests/cuda --message-format=json 2>/dev/null |
        python3 -c '
import json, sys, shutil
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] != ["bin"]:
        name = m["target"]["name"]
        if name in ("kernels_gpu", "selftest", "backends", "sim_device"):
            shutil.copy(m["executable"], sys.argv[1] + "/test-" + m["package_id"].split("#")[0].split("/")[-1] + "-" + name)
' "$out/bin"
    ls -la "$out/bin" >&2
    set +e
}

# Runs a check with a time limit; records {"rc", "s", "tail"} under its name.
results=()
check() {
    local name=$1 limit=$2
    shift 2
    local t0 log rc
    t0=$(date +%s.%N)
    log=$(mktemp)
    timeout "$limit" "$@" >"$log" 2>&1
    rc=$?
    local s
    s=$(python3 -c "import time; print(round(time.time() - $t0, 1))")
    local tail
    tail=$(tail -c 1500 "$log" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))')
    results+=("\"$name\": {\"rc\": $rc, \"s\": $s, \"tail\": $tail}")
    cp "$log" "$out/$name.log" 2>/dev/null
    rm -f "$log"
}

run() {
    export MOE_GPU_TESTS=1 RUST_BACKTRACE=1
    local bin=$out/bin gpu
    gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
    for t in "$bin"/test-*kernels-gpu*; do
        [[ -x $t ]] && check "launcher_tests_$(basename "$t")" 120 "$t" --test-threads 1
    done
    for t in "$bin"/test-*autograd-backends; do
        [[ -x $t ]] && check autograd_backend_parity 120 "$t" --test-threads 1
    done
    for t in "$bin"/test-*sim_device; do
        [[ -x $t ]] && check step_parity_cuda_vs_cpu 120 "$t" --test-threads 1
    done
    check grouped_gemm_seed_shapes 60 "$bin/gpu_bench" 8192 20
    check step_tiny_moe_cuda 60 "$bin/moe-cli" bench step --device cuda --preset tiny-k1p1-n16 --batch 8 \
        --seq 256 --steps 3 --warmup 1
    check step_seed_preset_cuda 150 "$bin/moe-cli" bench step --device cuda --preset qwen3-1.7b-k1p1-n16 \
        --batch 1 --seq 256 --steps 1 --warmup 0
    local IFS=,
    printf '{"gpu": %s, "checks": {%s}}\n' "$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$gpu")" \
        "${results[*]}"
}

case "$mode" in
    build) build ;;
    run) run ;;
    all) build && run ;;
    *) echo "usage: tools/gpu_check.sh [build|run]" >&2; exit 2 ;;
esac
