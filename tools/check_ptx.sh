#!/usr/bin/env bash
# CI check of the committed PTX (kernels-gpu/ptx/kernels.ptx), no GPU needed:
#   1. freshness: rebuild it with tools/build_ptx.sh into a temp file and diff (needs the pinned nightly;
#      installed here unless --no-install; skipped with a message when it cannot be had);
#   2. the PTX ISA version is <= 9.0 (lent machines run driver 580 = CUDA 13.0);
#   3. ptxas -arch=sm_80 and -arch=sm_90 (PyPI wheel nvidia-cuda-nvcc-cu12, pinned, installed into a venv
#      under .ci-cache/) assemble it; any spill fails; a resource table per kernel is printed.
#
# Usage: tools/check_ptx.sh [--no-install] [--skip-fresh] [--update-readme]
#   --no-install     do not install the nightly toolchain or the ptxas wheel (use what is there)
#   --skip-fresh     skip step 1
#   --update-readme  write the resource table into kernels-gpu/README.md, section "PTX and resources"
# Environment: MEDMOE_CI_CACHE (default .ci-cache), MEDMOE_PTX_TARGET_DIR (see build_ptx.sh), PYTHON.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

NIGHTLY=nightly-2026-05-20   # keep in sync with tools/build_ptx.sh
# 12.9 has no Python dependencies (the 13.0 wheel pulls broken unpinned 13.5 ones) and takes PTX ISA <= 8.8.
PTXAS_WHEEL="nvidia-cuda-nvcc-cu12==12.9.86"
ARCHS=(sm_80 sm_90)
MAX_ISA_MAJOR=9
MAX_ISA_MINOR=0
ptx=kernels-gpu/ptx/kernels.ptx
readme=kernels-gpu/README.md

install=1
fresh=1
update_readme=0
while (($#)); do
    case "$1" in
        --no-install) install=0; shift ;;
        --skip-fresh) fresh=0; shift ;;
        --update-readme) update_readme=1; shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "check_ptx: unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ -f "$ptx" ]] || { echo "check_ptx: $ptx missing (run tools/build_ptx.sh)" >&2; exit 1; }
cache=${MEDMOE_CI_CACHE:-$root/.ci-cache}
mkdir -p "$cache"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/check_ptx.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
t0=$SECONDS

# 1. Freshness.
if ((fresh)); then
    export RUSTUP_AUTO_INSTALL=0
    if ! rustup run "$NIGHTLY" rustc --version >/dev/null 2>&1 && ((install)); then
        echo "== check_ptx: installing $NIGHTLY"
        rustup toolchain install "$NIGHTLY" --profile minimal --component rust-src --component llvm-tools \
            --no-self-update || true
    fi
    if rustup run "$NIGHTLY" rustc --version >/dev/null 2>&1; then
        echo "== check_ptx: rebuilding the PTX ($NIGHTLY)"
        tools/build_ptx.sh --out "$tmp/kernels.ptx"
        if ! diff -u "$ptx" "$tmp/kernels.ptx" >"$tmp/fresh.diff"; then
            head -n 60 "$tmp/fresh.diff"
            echo "check_ptx: FAIL: $ptx is stale: run tools/build_ptx.sh and commit the result" >&2
            exit 1
        fi
        echo "check_ptx: $ptx is fresh"
    else
        echo "check_ptx: skipped freshness: toolchain $NIGHTLY not available"
    fi
fi

# 2. PTX ISA version.
version=$(sed -n 's/^\.version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p' "$ptx" | head -n 1)
read -r vmaj vmin <<<"$version"
if [[ -z "$version" ]] || ((vmaj > MAX_ISA_MAJOR || (vmaj == MAX_ISA_MAJOR && vmin > MAX_ISA_MINOR))); then
    echo "check_ptx: FAIL: PTX ISA '${version:-none}' is above $MAX_ISA_MAJOR.$MAX_ISA_MINOR (driver 580 / CUDA 13.0)" >&2
    exit 1
fi

# 3. ptxas from the pinned wheel.
venv="$cache/ptxas-venv"
ptxas=$(ls "$venv"/lib/python3*/site-packages/nvidia/cuda_nvcc/bin/ptxas 2>/dev/null | head -n 1 || true)
if [[ -z "$ptxas" ]]; then
    ((install)) || { echo "check_ptx: ptxas missing under $venv (run without --no-install)" >&2; exit 1; }
    echo "== check_ptx: installing $PTXAS_WHEEL into $venv"
    if "${PYTHON:-python3}" -m venv "$venv" && "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps "$PTXAS_WHEEL"; then
        ptxas=$(ls "$venv"/lib/python3*/site-packages/nvidia/cuda_nvcc/bin/ptxas | head -n 1)
    else
        # No venv/pip on this machine: fetch the same pinned wheel from PyPI with the standard
        # library and unpack it (a wheel is a zip).
        echo "== check_ptx: venv/pip unavailable; fetching the wheel with python's standard library"
        pkg="$cache/ptxas-pkg"
        "${PYTHON:-python3}" - "$PTXAS_WHEEL" "$pkg" <<'PY'
import io, re, sys, urllib.request, zipfile
name, version = sys.argv[1].split("==")
index = urllib.request.urlopen(f"https://pypi.org/simple/{name}/").read().decode()
wheel = re.escape(name.replace("-", "_")) + "-" + re.escape(version)
url = re.search(r'href="([^"#]+/' + wheel + r'-[^"#]*x86_64[^"#]*\.whl)', index).group(1)
zipfile.ZipFile(io.BytesIO(urllib.request.urlopen(url).read())).extractall(sys.argv[2])
PY
        ptxas="$pkg/nvidia/cuda_nvcc/bin/ptxas"
        chmod +x "$ptxas"
    fi
fi
echo "== check_ptx: $("$ptxas" --version | grep -o "release [0-9.]*, V[0-9.]*") on $ptx (PTX ISA $vmaj.$vmin)"

status=0
for arch in "${ARCHS[@]}"; do
    if ! "$ptxas" -arch="$arch" -O3 -v --warn-on-spills "$ptx" -o "$tmp/$arch.cubin" >"$tmp/$arch.log" 2>&1; then
        cat "$tmp/$arch.log" >&2
        echo "check_ptx: FAIL: ptxas -arch=$arch rejected $ptx" >&2
        exit 1
    fi
    # One line per kernel: name regs smem stack spill_stores spill_loads
    awk -v arch="$arch" '
        /Compiling entry function/ { match($0, /'\''[^'\'']*'\''/); k = substr($0, RSTART + 1, RLENGTH - 2); next }
        /bytes stack frame/ && k != "" { st[k] = $1; ss[k] = $5; sl[k] = $9; next }
        /Used [0-9]+ registers/ && k != "" {
            match($0, /Used [0-9]+ registers/); r = substr($0, RSTART + 5, RLENGTH - 15)
            sm = 0; if (match($0, /[0-9]+ bytes smem/)) sm = substr($0, RSTART, RLENGTH - 11)
            print k, r + 0, sm + 0, st[k] + 0, ss[k] + 0, sl[k] + 0; k = ""
        }' "$tmp/$arch.log" | LC_ALL=C sort >"$tmp/$arch.tab"
    while read -r k r sm st ss sl; do
        if ((ss > 0 || sl > 0)); then
            echo "check_ptx: FAIL: $k spills on $arch ($ss bytes stores, $sl bytes loads)" >&2
            status=1
        fi
    done <"$tmp/$arch.tab"
done
entries=$(grep -c '^\.visible \.entry' "$ptx" || true)
rows=$(wc -l <"$tmp/sm_80.tab")
if ((entries != rows)); then
    echo "check_ptx: FAIL: $entries .entry in the PTX but ptxas reported $rows kernels" >&2
    status=1
fi

# Resource table (markdown): registers / static shared bytes / stack bytes / spill bytes per arch.
{
    echo "| kernel | sm_80 regs | sm_80 smem B | sm_80 stack B | sm_90 regs | sm_90 smem B | sm_90 stack B | spills |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    LC_ALL=C join "$tmp/sm_80.tab" "$tmp/sm_90.tab" | while read -r k r8 m8 s8 ss8 sl8 r9 m9 s9 ss9 sl9; do
        echo "| \`$k\` | $r8 | $m8 | $s8 | $r9 | $m9 | $s9 | $((ss8 + sl8 + ss9 + sl9)) |"
    done
} >"$tmp/table.md"
cat "$tmp/table.md"

if ((update_readme)); then
    {
        echo "## PTX and resources"
        echo
        echo "\`ptx/kernels.ptx\` is generated by \`tools/build_ptx.sh\` ($NIGHTLY, target nvptx64-nvidia-cuda,"
        echo "sm_80, PTX ISA $vmaj.$vmin) from the kernels in \`src/kernels/\` monomorphised with the GPU context in"
        echo "\`src/ptx/\`, and committed, so users need only stable Rust and an NVIDIA driver."
        echo "\`tools/check_ptx.sh\` (run by CI) rebuilds it and diffs, then assembles it with"
        echo "\`ptxas\` ($PTXAS_WHEEL) for sm_80 and sm_90 and fails on any spill."
        echo "Resources as reported by \`ptxas -v\` (static shared memory only; dynamic shared memory is set at launch):"
        echo
        cat "$tmp/table.md"
    } >"$tmp/section.md"
    touch "$readme"
    # Replace the section (up to the next "## " heading) or append it at the end.
    awk -v secfile="$tmp/section.md" '
        function emit() { while ((getline l < secfile) > 0) print l; close(secfile); done = 1 }
        /^## PTX and resources[[:space:]]*$/ { emit(); skip = 1; next }
        skip && /^## / { skip = 0; print ""; }
        !skip { print }
        END { if (!done) { if (NR) print ""; emit() } }' "$readme" >"$tmp/README.md"
    cp "$tmp/README.md" "$readme"
    echo "check_ptx: updated the \"PTX and resources\" section of $readme"
fi

if ((status)); then
    exit 1
fi
echo "check_ptx: OK ($rows kernels, 0 spills, ${ARCHS[*]}; $((SECONDS - t0)) s)"
