#!/usr/bin/env bash
# "Linker" for the nvptx64-nvidia-cuda target, called by rustc in place of llvm-bitcode-linker
# (that rustup component cannot be fetched here; DESIGN.md section 4). Not meant to be run by hand:
# tools/build_ptx.sh points cargo at it.
#
# rustc calls it as the llbc linker flavour:
#   ptx_linker.sh --export-symbol K1 --export-symbol K2 .. OBJ.o.. LIB.rlib.. -L DIR.. \
#                 --target nvptx64-nvidia-cuda --target-cpu sm_80 -o OUT.ptx -O3 [--debug]
# where every OBJ and every member of every rlib is LLVM bitcode. It runs
#   1. llvm-link           our crate's objects, all of them (the kernels);
#   2. llvm-link --only-needed  that module + the rlibs' bitcode (core, compiler_builtins, ..) and,
#                          when MEDMOE_LIBDEVICE names libdevice.10.bc, libdevice (for __nv_expf & co);
#   3. opt --strip-debug -passes='internalize,default<O3>' keeping only the exported kernel symbols;
#   4. a check that nothing but LLVM intrinsics is left undefined (libm calls do not lower on nvptx);
#   5. llc -mcpu=<target-cpu> -O3 -> OUT.ptx.
# Environment (set by build_ptx.sh): MEDMOE_LLVM_BIN = folder with llvm-link/opt/llc/llvm-ar
# (the nightly's llvm-tools), MEDMOE_LIBDEVICE = optional path to libdevice.10.bc.
set -euo pipefail

die() {
    echo "ptx_linker: $*" >&2
    exit 1
}

bin=${MEDMOE_LLVM_BIN:-}
[[ -n "$bin" && -x "$bin/llc" ]] || die "MEDMOE_LLVM_BIN must name the llvm-tools bin folder (run tools/build_ptx.sh)"

exports=()
objs=()
rlibs=()
out=""
cpu="sm_80"
while (($#)); do
    case "$1" in
        --export-symbol) exports+=("$2"); shift 2 ;;
        -o) out="$2"; shift 2 ;;
        --target-cpu) cpu="$2"; shift 2 ;;
        --target) [[ "$2" == nvptx64-nvidia-cuda ]] || die "unexpected target $2"; shift 2 ;;
        -L) shift 2 ;;
        -O*|--debug) shift ;;
        *.rlib) rlibs+=("$1"); shift ;;
        *.o) objs+=("$1"); shift ;;
        *) die "unexpected argument '$1'" ;;
    esac
done
[[ -n "$out" ]] || die "no -o OUTPUT"
((${#objs[@]})) || die "no object files"
((${#exports[@]})) || die "no exported symbols: no #[no_mangle] extern \"ptx-kernel\" entry point was compiled"

work=$(mktemp -d "${TMPDIR:-/tmp}/ptx_linker.XXXXXX")
trap 'rm -rf "$work"' EXIT

# 1. Our crate, whole (several codegen units must all be kept).
"$bin/llvm-link" -o "$work/crate.bc" "${objs[@]}"

# 2. Libraries, only what the kernels reference. rlibs are ar archives of bitcode plus lib.rmeta.
libs=()
i=0
for r in "${rlibs[@]}"; do
    d="$work/lib$i"
    i=$((i + 1))
    mkdir "$d"
    (cd "$d" && "$bin/llvm-ar" x "$r")
    rm -f "$d/lib.rmeta"
    while IFS= read -r f; do libs+=("$f"); done < <(find "$d" -name '*.o' | LC_ALL=C sort)
done
if [[ -n "${MEDMOE_LIBDEVICE:-}" ]]; then
    [[ -f "$MEDMOE_LIBDEVICE" ]] || die "MEDMOE_LIBDEVICE=$MEDMOE_LIBDEVICE does not exist"
    libs+=("$MEDMOE_LIBDEVICE")
fi
"$bin/llvm-link" --only-needed -o "$work/linked.bc" "$work/crate.bc" "${libs[@]}"

# 3. Internalize everything but the kernels, optimise the whole program, drop debug info (paths).
api=$(IFS=,; echo "${exports[*]}")
"$bin/opt" --strip-debug -passes='internalize,default<O3>' --internalize-public-api-list="$api" \
    "$work/linked.bc" -o "$work/opt.bc"

# 4. Anything still declared but not an LLVM intrinsic would become an unresolved .extern in the PTX.
undef=$("$bin/llvm-dis" "$work/opt.bc" -o - | sed -n 's/^declare .*@\([^(]*\)(.*/\1/p' | grep -v '^"\?llvm\.' || true)
if [[ -n "$undef" ]]; then
    die "undefined functions left after linking (libm does not lower on nvptx: use ex2.approx or set MEDMOE_LIBDEVICE):
$undef"
fi

# 5. Code generation.
"$bin/llc" -mcpu="$cpu" -O3 "$work/opt.bc" -o "$out"
