# Shared helpers for tools/bench_gemm.sh and tools/bench_step.sh (sourced, not run).
# Sets ROOT, PYTHON, MOE_CLI; provides need_python_modules and build_cli.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x pyenv/bin/python ]]; then
        PYTHON=pyenv/bin/python
    else
        PYTHON=python3
    fi
fi

MOE_CLI="${MOE_CLI:-${CARGO_TARGET_DIR:-target}/release/moe-cli}"

die() {
    echo "error: $*" >&2
    exit 1
}

# need_python_modules MOD... : fail clearly when the interpreter or a module is missing.
need_python_modules() {
    command -v "$PYTHON" >/dev/null 2>&1 || [[ -x "$PYTHON" ]] ||
        die "python interpreter '$PYTHON' not found. Set PYTHON=/path/to/python or create the venv:
    python3 -m venv pyenv && pyenv/bin/pip install -r tools/requirements.txt"
    local m
    for m in "$@"; do
        "$PYTHON" -c "import $m" >/dev/null 2>&1 ||
            die "'$PYTHON' cannot import '$m' (the reference needs: $*). Create the venv:
    python3 -m venv pyenv && pyenv/bin/pip install -r tools/requirements.txt
or point PYTHON at an interpreter that has them."
    done
}

build_cli() {
    if [[ "${SKIP_BUILD:-0}" == "1" ]]; then
        echo "[bench] SKIP_BUILD=1: not building, using $MOE_CLI" >&2
    else
        echo "[bench] cargo build --release -p cli" >&2
        cargo build --release -p cli >&2
    fi
    [[ -x "$MOE_CLI" ]] || die "$MOE_CLI not found or not executable (set MOE_CLI or CARGO_TARGET_DIR)"
}
